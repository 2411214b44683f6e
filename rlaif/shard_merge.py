"""The merge of a sharded run: OUT and every shard into one new OUT, in input order.

Each process writes its records in input order, so one pass over the input, with
one reading position a file, finds every record at the head of some file: the
merge copies lines as written and holds one group of lines at a time. A file out
of input order (the input changed between two runs) falls back to an index of
where each key's lines are (byte offsets, not the lines).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rlaif.io import is_skip_row


class _OutOfOrder(Exception):
    """A file's records are not in input order (the input changed between runs): merge by index instead."""


def merge_outputs(out: Path, records: Iterable[dict[str, Any]], key: str, group_key: str | None,
                  sources: list[Path]) -> dict[str, int]:
    """Write OUT anew from `sources` (OUT first, then the shards) in the order of `records`.

    A key found in several files is taken from the first (a merge killed after its rename leaves
    the shards behind). Lines are copied as written. Records whose keys are not in the input
    (orphans) are kept, at the end. Returns {"records", "skipped", "orphans"} of the new OUT.
    """
    tmp = out.with_name(out.name + ".merging")
    try:
        with tmp.open("wb") as handle:
            counts = _merge_in_order(records, sources, key, group_key is not None, handle)
    except _OutOfOrder:
        with tmp.open("wb") as handle:
            counts = _merge_by_index(records, sources, key, group_key is not None, handle)
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    tmp.replace(out)
    return counts


def _groups(path: Path, key: str) -> Iterator[tuple[str, int, int, list[bool]]]:
    """(key, start and end byte, which lines are skip rows) of each run of consecutive lines with one key."""
    current, begin, flags, at = None, 0, [], 0
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                row = json.loads(line)
                value = str(row.get(key))
                if value != current and flags:
                    yield current, begin, at, flags
                    flags = []
                if not flags:
                    current, begin = value, at
                flags.append(is_skip_row(row))
            at += len(line)
    if flags:
        yield current, begin, at, flags


class _Copier:
    """Copies groups of lines from the source files into the new OUT, one record or a whole group each."""

    def __init__(self, sources: list[Path], groups: bool, handle: Any):
        self.files = [path.open("rb") for path in sources]
        self.groups, self.handle = groups, handle
        self.counts = {"records": 0, "skipped": 0, "orphans": 0}

    def emit(self, source: int, begin: int, end: int, flags: list[bool]) -> None:
        self.files[source].seek(begin)
        lines = self.files[source].read(end - begin).splitlines(keepends=True)
        lines = [line for line in lines if line.strip()]
        if not self.groups:  # two rows of one record (two writers once): keep the first
            lines, flags = lines[:1], flags[:1]
        self.handle.writelines(line if line.endswith(b"\n") else line + b"\n" for line in lines)
        self.counts["records"] += len(lines)
        self.counts["skipped"] += sum(flags)

    def close(self) -> None:
        for file in self.files:
            file.close()


def _merge_in_order(records: Iterable[dict[str, Any]], sources: list[Path], key: str, groups: bool,
                    handle: Any) -> dict[str, int]:
    """Every file is in input order (each process writes its records so): one pass, one head a file."""
    readers = [_groups(path, key) for path in sources]
    heads = [next(reader, None) for reader in readers]
    copier = _Copier(sources, groups, handle)
    try:
        for record in records:
            wanted, taken = str(record["id"]), False
            for i, head in enumerate(heads):
                if head is not None and head[0] == wanted:
                    if not taken:
                        copier.emit(i, *head[1:])
                        taken = True
                    heads[i] = next(readers[i], None)
        if any(head is not None for head in heads):
            raise _OutOfOrder
    finally:
        copier.close()
    return copier.counts


def _merge_by_index(records: Iterable[dict[str, Any]], sources: list[Path], key: str, groups: bool,
                    handle: Any) -> dict[str, int]:
    """Where the files are out of input order: an index of where each key's lines are (not the lines), then copies."""
    index: dict[str, tuple[int, int, int, list[bool]]] = {}
    for number, path in enumerate(sources):
        for value, begin, end, flags in _groups(path, key):
            index.setdefault(value, (number, begin, end, flags))
    copier = _Copier(sources, groups, handle)
    try:
        for record in records:
            found = index.pop(str(record["id"]), None)
            if found is not None:
                copier.emit(*found)
        for found in index.values():  # orphans: records of keys the input no longer has, kept at the end
            copier.emit(*found)
            copier.counts["orphans"] += 1
    finally:
        copier.close()
    return copier.counts
