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
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, list):
                return data
        return list(_iter_jsonl(path))
    except (OSError, UnicodeDecodeError) as err:
        raise RlaifError(f"Cannot read {path}: {err}.") from err
    except ImportError as err:
        raise RlaifError(f"Reading {suffix} files needs pandas: pip install pandas.") from err


def _iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
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
        record = {name: row.get(col) for name, col in source.items()}
        for name, value in record.items():
            if not isinstance(value, str):
                value = "" if value is None else str(value)
                record[name] = value
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


def done_ids(path: str | Path) -> set[str]:
    """Ids already written to an output file; a torn last line (a killed write) is cut off."""
    path = Path(path)
    if not path.exists():
        return set()
    repair_tail(path)
    return {row["id"] for row in _iter_jsonl(path) if "id" in row}


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
        for row in rows:
            self.write(row)

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
