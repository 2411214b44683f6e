"""Reading and writing records: JSONL, CSV, Parquet and saved Hugging Face datasets.

Readers check columns and empty texts and raise `RlaifError` with a fix.
`RecordWriter` appends one line a record and flushes it to disk, so a killed run
keeps everything it finished; `done_ids` reads those back to resume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rlaif.errors import RlaifError
from rlaif.records import content_id
from rlaif.text import as_text

TABULAR = {".csv", ".parquet", ".pq"}


def parse_column_map(items: Sequence[str] | None) -> dict[str, str]:
    """Turn ["response_a=chosen", ...] into {"response_a": "chosen"}."""
    mapping: dict[str, str] = {}
    for item in items or ():
        ours, sep, theirs = item.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise RlaifError(f"Bad column mapping {item!r}: write it as OUR_FIELD=THEIR_COLUMN, e.g. response_a=chosen.")
        mapping[ours.strip()] = theirs.strip()
    return mapping


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a JSONL/JSON/CSV/Parquet file or a saved HF dataset directory, as dicts."""
    path = Path(path)
    if not path.exists():
        raise RlaifError(f"Input {path} does not exist: check the path.")
    if path.is_dir():
        return _read_hf_dataset(path)
    suffix = path.suffix.lower()
    try:
        if suffix in TABULAR:
            import pandas as pd  # noqa: PLC0415 (optional, heavy)

            frame = pd.read_csv(path, keep_default_na=False) if suffix == ".csv" else pd.read_parquet(path)
            return frame.to_dict(orient="records")
        if suffix == ".json":
            rows = _read_json_list(path)
            if rows is not None:
                return rows
        return list(read_jsonl(path))
    except ImportError as err:
        raise RlaifError(f"Reading {suffix} files needs pandas and pyarrow: pip install pandas pyarrow.") from err
    except RlaifError:
        raise
    except (OSError, ValueError) as err:  # pandas' ParserError/EmptyDataError and pyarrow's errors are ValueErrors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RlaifError(f"Cannot read {path} as {suffix.lstrip('.') or 'JSONL'}: {first}. Check the file.") from err


def _read_json_list(path: Path) -> list[dict[str, Any]] | None:
    """A .json file holding one list of objects, or None when it is JSON Lines after all."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise RlaifError(f"{path} must hold a list of JSON objects (or one object a line).")
    return data


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The objects of a JSON Lines file (rlaif's own outputs are always JSONL, whatever their suffix)."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise RlaifError(f"{path}:{number} is not valid JSON ({err.msg}); expected one JSON object a line.") from err
            if not isinstance(row, dict):
                raise RlaifError(f"{path}:{number} is not a JSON object; expected one object a line.")
            yield row


def _read_hf_dataset(path: Path) -> list[dict[str, Any]]:
    try:
        from datasets import DatasetDict, load_from_disk  # noqa: PLC0415
    except ImportError as err:  # pragma: no cover - datasets is a dependency
        raise RlaifError("Reading a saved dataset needs the `datasets` package.") from err
    try:
        data = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as err:
        raise RlaifError(f"{path} is a directory but not a dataset saved with `save_to_disk`: {err}") from err
    if isinstance(data, DatasetDict):
        split = "train" if "train" in data else next(iter(data))
        data = data[split]
    return [dict(row) for row in data]


def read_records(
    path: str | Path,
    fields: Sequence[str],
    column_map: dict[str, str] | None = None,
    id_from: Sequence[str] | None = None,
    keep_extra: bool = False,
) -> list[dict[str, Any]]:
    """Rows renamed to `fields` (via `column_map`), checked for presence and empty text.

    A missing `id` is made from the text of `id_from` (default: all fields).
    """
    column_map = column_map or {}
    unknown = sorted(set(column_map) - set(fields) - {"id"})
    if unknown:
        raise RlaifError(f"--column-map names unknown field(s) {', '.join(unknown)}; "
                         f"the fields are: {', '.join([*fields, 'id'])}.")
    rows = read_rows(path)
    if not rows:
        raise RlaifError(f"{path} holds no records.")
    source = {name: column_map.get(name, name) for name in fields}
    present = set(rows[0])
    missing = [f"{name}" + (f" (mapped to {col!r})" if col != name else "") for name, col in source.items() if col not in present]
    if missing:
        hint = ", ".join(sorted(present))
        raise RlaifError(
            f"{path} lacks column(s) {', '.join(missing)}; it has: {hint}. Map yours with --column-map FIELD=COLUMN."
        )
    id_col = column_map.get("id", "id")
    records = []
    seen: set[str] = set()
    for number, row in enumerate(rows, 1):
        record = {name: as_text(row.get(col), f"{path} record {number}: field {name!r}") for name, col in source.items()}
        for name, value in record.items():
            if not value.strip():
                raise RlaifError(f"{path} record {number}: field {name!r} is empty; remove the record or fill it in.")
        raw_id = row.get(id_col)
        rid = str(raw_id) if raw_id not in (None, "") else content_id(*(record[f] for f in (id_from or fields)))
        if rid in seen:
            if raw_id in (None, ""):
                raise RlaifError(f"{path} record {number} repeats an earlier record word for word (its id {rid!r} "
                                 "was made from its content); remove the repeat or give each record an id.")
            raise RlaifError(f"{path} record {number}: duplicate id {rid!r}; ids must be unique.")
        seen.add(rid)
        record = {"id": rid, **record}
        if keep_extra:
            record["extra"] = {k: v for k, v in row.items() if k not in source.values() and k != id_col}
        records.append(record)
    return records


def with_ids(records: Iterable[dict[str, Any]], fields: Sequence[str]) -> list[dict[str, Any]]:
    """Records as stages take them from Python: every field present as text, a missing `id` made from the text."""
    out, seen = [], set()
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise RlaifError(f"Record {number} is a {type(record).__name__}, not a dict with {', '.join(fields)}.")
        missing = [f for f in fields if f not in record]
        if missing:
            raise RlaifError(f"Record {number} lacks {', '.join(missing)}; each record needs {', '.join(fields)} "
                             "(id optional).")
        row = dict(record)
        for name in fields:
            row[name] = as_text(record[name], f"record {number}: field {name!r}")
        made = record.get("id") in (None, "")
        row["id"] = content_id(*(row[f] for f in fields)) if made else str(record["id"])
        if row["id"] in seen:
            why = " (made from its content: the record repeats an earlier one)" if made else ""
            raise RlaifError(f"Record {number}: duplicate id {row['id']!r}{why}; ids must be unique.")
        seen.add(row["id"])
        out.append(row)
    return out


def check_output(path: str | Path, directory: bool = False) -> None:
    """Fail before any work when `path` cannot be written: a parent is a file, or the kind is wrong."""
    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists():
            if parent != path and not parent.is_dir():
                raise RlaifError(f"Cannot write {path}: {parent} is a file, not a directory. Choose another path.")
            break
    if path.exists() and path.is_dir() != directory:
        kind = "a directory" if path.is_dir() else "a file"
        raise RlaifError(f"Cannot write {path}: it is {kind}. Choose another path.")


def done_ids(path: str | Path) -> set[str]:
    """Ids already written to an output file; a torn last line (a killed write) is cut off."""
    path = Path(path)
    if not path.exists():
        return set()
    repair_tail(path)
    return {row["id"] for row in read_jsonl(path) if "id" in row}


def drop_last_group(path: Path, key: str) -> None:
    """Cut the trailing records that share the last record's `key` (a group a kill may have split);
    the resumed run redoes that group, from the cache."""
    repair_tail(path)
    lines = path.read_bytes().splitlines(keepends=True)
    if not lines:
        return
    last = json.loads(lines[-1]).get(key)
    keep = len(lines)
    while keep and json.loads(lines[keep - 1]).get(key) == last:
        keep -= 1
    with path.open("rb+") as handle:
        handle.truncate(sum(len(line) for line in lines[:keep]))


def repair_tail(path: Path) -> None:
    """Truncate a partial last line left by a process killed mid-write."""
    with path.open("rb+") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        if size == 0:
            return
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return
        block = min(size, 1 << 20)
        handle.seek(size - block)
        tail = handle.read(block)
        cut = tail.rfind(b"\n")
        handle.truncate(size - block + cut + 1 if cut >= 0 else 0)


class RecordWriter:
    """Append JSON lines, each flushed and fsynced, so finished records survive a kill."""

    def __init__(self, path: str | Path, overwrite: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite and self.path.exists():
            self.path.unlink()
        self._handle = self.path.open("a", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def write_all(self, rows: Iterable[dict[str, Any]]) -> None:
        """Several records in one write and one fsync (all of a prompt's pairs land together)."""
        block = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        if block:
            self._handle.write(block)
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
