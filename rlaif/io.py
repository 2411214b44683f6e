"""Reading and writing records: JSONL, CSV, Parquet and saved Hugging Face datasets.

Readers check columns and empty texts and raise `RlaifError` with a fix.
`RecordWriter` appends one line a record and flushes it to disk, so a killed run
keeps everything it finished; `done_ids` reads those back to resume.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rlaif.errors import RlaifError
from rlaif.records import content_id

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
            raise RlaifError(f"{path} record {number}: duplicate id {rid!r}; ids must be unique.")
        seen.add(rid)
        record = {"id": rid, **record}
        if keep_extra:
            record["extra"] = {k: v for k, v in row.items() if k not in source.values() and k != id_col}
        records.append(record)
    return records


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


def as_text(value: Any, where: str) -> str:
    """A text field: strings as they are, numbers as text, chat messages (TRL's conversational
    format, a list of {role, content}) as "Human: ... / Assistant: ..." turns."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, dict) and "content" in value:
        value = [value]
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        if len(value) == 1 and value[0].get("role") in (None, "assistant"):
            return str(value[0]["content"])
        names = {"user": "Human", "assistant": "Assistant", "system": "System"}
        return "\n\n".join(f"{names.get(m.get('role'), m.get('role') or 'Human')}: {m['content']}" for m in value)
    raise RlaifError(f"{where} is a {type(value).__name__}, not text or chat messages; convert it to a string.")


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


def meta_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


# -- resumable outputs ---------------------------------------------------------------------------


# Settings that change how a run goes, not what it writes: a resumed run may change them freely.
RUN_ONLY = ("batch_tokens", "chunk_pairs", "chunk_prompts", "cache_dir", "no_cache")


def config_digest(config: Any, skip: tuple[str, ...] = RUN_ONLY) -> str:
    """A short hash of a config dataclass's output-changing fields (stored in `<out>.meta.json`)."""
    keep = {k: v for k, v in asdict(config).items() if k not in skip}
    return hashlib.sha256(repr(sorted(keep.items())).encode()).hexdigest()[:16]


def prepare_output(out: Path, digest: str, overwrite: bool, key: str = "id") -> set[str]:
    """Values of `key` already in `out` (to skip), after refusing a file made with other settings."""
    if overwrite and out.exists():
        out.unlink()
    if not out.exists():
        return set()
    old = read_meta(out).get("config_digest")
    if old and old != digest:
        raise RlaifError(f"{out} was made with other settings; pass --overwrite to replace it or choose another --out.")
    if key != "id" and read_meta(out).get("status") != "done":
        drop_last_group(out, key)  # a killed run may have cut the last prompt's pairs short: redo it (from the cache)
    else:
        repair_tail(out)
    return {str(row[key]) for row in read_jsonl(out) if key in row}


def read_meta(out: Path) -> dict[str, Any]:
    """The `<out>.meta.json` of a finished or running job, or {} when there is none (or it is torn)."""
    try:
        return json.loads(meta_path(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def chunks(items: list, size: int) -> Iterator[list]:
    """Consecutive slices of `size` items (the unit written between two flushes)."""
    for start in range(0, len(items), size):
        yield items[start:start + size]
