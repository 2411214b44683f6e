"""Reading and writing records: JSONL, CSV, Parquet and saved Hugging Face datasets.

Readers check columns and empty texts and raise `RlaifError` with a fix.
`RecordWriter` appends one line a record and flushes it to disk, so a killed run
keeps everything it finished; `done_ids` reads those back to resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rlaif.errors import RlaifError
from rlaif.records import content_id
from rlaif.text import as_text

TABULAR = {".csv", ".parquet", ".pq"}

log = logging.getLogger(__name__)
# The fields of a skip row: a record an rlaif stage left out (its prompt did not fit the model).
SKIP_FIELDS = frozenset({"id", "prompt_id", "skipped", "tokens", "limit"})


def is_skip_row(row: dict[str, Any]) -> bool:
    """A row saying its record was left out (`{"id": ..., "skipped": "too long: ..."}`), not a result."""
    return isinstance(row.get("skipped"), str) and set(row) <= SKIP_FIELDS


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
    with _read_errors(path, suffix):
        if suffix in TABULAR:
            import pandas as pd  # noqa: PLC0415 (optional, heavy)

            frame = pd.read_csv(path, keep_default_na=False) if suffix == ".csv" else pd.read_parquet(path)
            return frame.to_dict(orient="records")
        if suffix == ".json":
            rows = _read_json_list(path)
            if rows is not None:
                return rows
        return list(read_jsonl(path))


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
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            line = _utf8_line(path, number, raw)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise RlaifError(f"{path}:{number} is not valid JSON ({err.msg}); expected one JSON object a line.") from err
            if not isinstance(row, dict):
                raise RlaifError(f"{path}:{number} is not a JSON object; expected one object a line.")
            yield row


def _utf8_line(path: Path, number: int, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RlaifError(f"{path}:{number} is not UTF-8 text (byte {err.start + 1} of that line is "
                         f"{raw[err.start:err.start + 1]!r}); save the file as UTF-8.") from None


def first_non_utf8_line(path: str | Path) -> RlaifError | None:
    """The error naming the first line of `path` that is not UTF-8 (None: it all is)."""
    with Path(path).open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                _utf8_line(Path(path), number, raw)
            except RlaifError as err:
                return err
    return None


def _read_hf_dataset(path: Path) -> list[dict[str, Any]]:
    return [dict(row) for row in _open_hf_dataset(path)]


def _open_hf_dataset(path: Path) -> Any:
    """A dataset saved with `save_to_disk` (memory-mapped; of a DatasetDict, the train split or the first)."""
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
    return data


def read_records(
    path: str | Path,
    fields: Sequence[str],
    column_map: dict[str, str] | None = None,
    id_from: Sequence[str] | None = None,
    keep_extra: bool = False,
    rows: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Rows renamed to `fields` (via `column_map`), checked for presence and empty text.

    A missing `id` is made from the text of `id_from` (default: all fields). Every mapped column
    must exist. Skip rows of an rlaif output (records left out as too long) are left out with a
    warning. `rows`: the file's rows when the caller has read them already.
    """
    column_map = column_map or {}
    _check_column_map(column_map, fields)
    rows = read_rows(path) if rows is None else rows
    if rows:
        kept = [row for row in rows if not is_skip_row(row)]
        if len(kept) < len(rows):
            log.warning("%s: left out %d record(s) skipped when it was made (too long for the model).", path,
                        len(rows) - len(kept))
        rows = kept
    if not rows:
        raise RlaifError(f"{path} holds no records.")
    source = {name: column_map.get(name, name) for name in fields}
    _check_columns(path, rows[0], source, column_map)
    id_col = column_map.get("id", "id")
    seen: set[str] = set()
    return [_check_record(path, number, row, source, id_col, fields, id_from, keep_extra, seen)
            for number, row in enumerate(rows, 1)]


def _check_column_map(column_map: dict[str, str], fields: Sequence[str]) -> None:
    unknown = sorted(set(column_map) - set(fields) - {"id"})
    if unknown:
        raise RlaifError(f"--column-map names unknown field(s) {', '.join(unknown)}; "
                         f"the fields are: {', '.join([*fields, 'id'])}.")


def _check_columns(path: str | Path, first: dict[str, Any], source: dict[str, str], column_map: dict[str, str]) -> None:
    """Every field's column (and a mapped id column) must be in the first row."""
    present = set(first)
    mapped = {**source, **({"id": column_map["id"]} if "id" in column_map else {})}  # a mapped id column must exist
    missing = [f"{name}" + (f" (mapped to {col!r})" if col != name else "") for name, col in mapped.items()
               if col not in present]
    if missing:
        hint = ", ".join(sorted(present))
        raise RlaifError(
            f"{path} lacks column(s) {', '.join(missing)}; it has: {hint}. Map yours with --column-map FIELD=COLUMN."
        )


def _check_record(path: str | Path, number: int, row: dict[str, Any], source: dict[str, str], id_col: str,
                  fields: Sequence[str], id_from: Sequence[str] | None, keep_extra: bool, seen: Any) -> dict[str, Any]:
    """Row `number` as a record: fields as text, none empty, its id (made from the text when missing) not in
    `seen` (a set or an IdSet; None: not checked), then added to it."""
    record = {name: as_text(row.get(col), f"{path} record {number}: field {name!r}") for name, col in source.items()}
    for name, value in record.items():
        if not value.strip():
            raise RlaifError(f"{path} record {number}: field {name!r} is empty; remove the record or fill it in.")
    raw_id = row.get(id_col)
    rid = str(raw_id) if raw_id not in (None, "") else content_id(*(record[f] for f in (id_from or fields)))
    if seen is not None:
        if rid in seen:
            if raw_id in (None, ""):
                raise RlaifError(f"{path} record {number} repeats an earlier record word for word (its id {rid!r} "
                                 "was made from its content); remove the repeat or give each record an id.")
            raise RlaifError(f"{path} record {number}: duplicate id {rid!r}; ids must be unique.")
        seen.add(rid)
    record = {"id": rid, **record}
    if keep_extra:
        record["extra"] = {k: v for k, v in row.items() if k not in source.values() and k != id_col}
    return record


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
            if not row[name].strip():
                raise RlaifError(f"Record {number}: field {name!r} is empty; remove the record or fill it in.")
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


# -- streaming: inputs too big to hold ------------------------------------------------------------------------------


def iter_rows(path: str | Path, batch_rows: int = 4096) -> Iterator[dict[str, Any]]:
    """The rows of an input, read a batch at a time (what `read_rows` returns, without holding the file).

    JSONL line by line; CSV, Parquet and saved datasets `batch_rows` rows at a time. CSV
    cells come as text, as written (`read_rows` lets pandas guess numbers for the whole file,
    which a reader of one batch at a time cannot). A .json file holding one list is read whole.
    """
    path = Path(path)
    if not path.exists():
        raise RlaifError(f"Input {path} does not exist: check the path.")
    if path.is_dir():
        yield from _iter_hf_dataset(path, batch_rows)
        return
    suffix = path.suffix.lower()
    with _read_errors(path, suffix):
        if suffix == ".csv":
            import pandas as pd  # noqa: PLC0415 (optional, heavy)

            for frame in pd.read_csv(path, keep_default_na=False, dtype=str, chunksize=batch_rows):
                yield from frame.to_dict(orient="records")
        elif suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq  # noqa: PLC0415

            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
                yield from batch.to_pylist()
        elif suffix == ".json" and _first_char(path) == "[":
            yield from read_rows(path)
        else:
            yield from read_jsonl(path)


@contextlib.contextmanager
def _read_errors(path: Path, suffix: str) -> Iterator[None]:
    """A reader's failures as one-line `RlaifError`s saying how to fix them."""
    try:
        yield
    except ImportError as err:
        raise RlaifError(f"Reading {suffix} files needs pandas and pyarrow: pip install pandas pyarrow.") from err
    except RlaifError:
        raise
    except UnicodeDecodeError as err:
        raise (first_non_utf8_line(path) or RlaifError(f"{path} is not UTF-8 text; save it as UTF-8.")) from err
    except (OSError, ValueError) as err:  # pandas' ParserError/EmptyDataError and pyarrow's errors are ValueErrors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RlaifError(f"Cannot read {path} as {suffix.lstrip('.') or 'JSONL'}: {first}. Check the file.") from err


def _first_char(path: Path) -> str:
    with path.open("rb") as handle:
        return handle.read(4096).lstrip()[:1].decode("ascii", "replace")


def _iter_hf_dataset(path: Path, batch_rows: int) -> Iterator[dict[str, Any]]:
    for batch in _open_hf_dataset(path).iter(batch_size=batch_rows):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns)):
            yield dict(zip(columns, values))


class RecordStream:
    """The checked records of an input file, read again in batches each time it is iterated.

    Each pass yields what `read_records(path, ...)[:limit]` returns, with the same checks and
    errors; the first whole pass also refuses repeated ids (remembered as an `IdSet`, about 12
    bytes an id) and sets `count`. Stages take it wherever they take a list of records, so a
    million-record input is never held in memory.
    """

    def __init__(self, path: str | Path, fields: Sequence[str], column_map: dict[str, str] | None = None,
                 id_from: Sequence[str] | None = None, keep_extra: bool = False, limit: int | None = None):
        self.path = Path(path)
        self.fields = list(fields)
        self.column_map = dict(column_map or {})
        self.id_from = id_from
        self.keep_extra = keep_extra
        self.limit = limit
        self.count: int | None = None  # records, once a pass has read them all
        _check_column_map(self.column_map, self.fields)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from rlaif.idset import IdSet  # noqa: PLC0415

        seen = IdSet() if self.count is None else None
        source = {name: self.column_map.get(name, name) for name in self.fields}
        id_col = self.column_map.get("id", "id")
        number = skipped = 0
        for row in iter_rows(self.path):
            if self.limit and number >= self.limit:
                break
            if is_skip_row(row):
                skipped += 1
                continue
            number += 1
            if number == 1:
                _check_columns(self.path, row, source, self.column_map)
            yield _check_record(self.path, number, row, source, id_col, self.fields, self.id_from,
                                self.keep_extra, seen)
        if skipped and seen is not None:
            log.warning("%s: left out %d record(s) skipped when it was made (too long for the model).", self.path,
                        skipped)
        if not number:
            raise RlaifError(f"{self.path} holds no records.")
        self.count = number


def stream_records(path: str | Path, fields: Sequence[str], column_map: dict[str, str] | None = None,
                   id_from: Sequence[str] | None = None, keep_extra: bool = False,
                   limit: int | None = None) -> RecordStream:
    """`read_records` for inputs of any size: a `RecordStream` (re-iterable, read in batches)."""
    return RecordStream(path, fields, column_map, id_from, keep_extra, limit)


def stage_records(records: Iterable[dict[str, Any]], fields: Sequence[str]) -> list[dict[str, Any]] | RecordStream:
    """What a stage iterates: a `RecordStream` as it is (checked as it is read), anything else through `with_ids`."""
    if isinstance(records, RecordStream):
        missing = [f for f in fields if f not in records.fields]
        if missing:
            raise RlaifError(f"The records of {records.path} have no {', '.join(missing)}; this stage needs "
                             f"{', '.join(fields)}.")
        return records
    return with_ids(records, fields)
