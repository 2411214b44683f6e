"""A set of record ids in about 12 bytes each: what a million-record run keeps of its ids.

A Python set of a million 16-character ids takes about 100 MB; the ids a run must
remember (the finished ones, to resume; every input id, to refuse a repeat) would
make its memory grow with the input. `IdSet` keeps a 95-bit digest (blake2b) of
each id instead, in 256 sorted numpy arrays (one per first byte, so inserting
copies one small array, never the whole set) plus a small set of recent ones.
Two different ids share a digest with probability about n^2 / 2^96 (1e-17 for a
million ids), so membership is as good as exact. It cannot list its ids back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any


class IdSet:
    """`add`, `update`, `in` and `len` of a set of string ids (ints and other keys are taken as `str(key)`)."""

    FLUSH = 16384  # recent digests kept in a Python set before they go into the sorted arrays

    def __init__(self, ids: Iterable[Any] = ()):
        import numpy as np  # noqa: PLC0415 (numpy is a dependency; keep `import rlaif.idset` cheap)

        self._np = np
        self._buckets = [np.empty(0, dtype="S12") for _ in range(256)]
        self._recent: set[bytes] = set()
        self._size = 0
        self.update(ids)

    @staticmethod
    def digest(key: Any) -> bytes:
        """12 bytes of blake2b, the last one odd: numpy's fixed-width bytes drop trailing NULs, so none may end so."""
        raw = hashlib.blake2b(str(key).encode("utf-8"), digest_size=12, person=b"rlaif-ids").digest()
        return raw[:11] + bytes((raw[11] | 1,))

    def _has(self, digest: bytes) -> bool:
        if digest in self._recent:
            return True
        bucket = self._buckets[digest[0]]
        at = int(bucket.searchsorted(digest))
        return at < len(bucket) and bucket[at] == digest

    def __contains__(self, key: Any) -> bool:
        return self._has(self.digest(key))

    def add(self, key: Any) -> bool:
        """Add `key`; True when it was not there yet."""
        digest = self.digest(key)
        if self._has(digest):
            return False
        self._recent.add(digest)
        self._size += 1
        if len(self._recent) >= self.FLUSH:
            self._flush()
        return True

    def update(self, keys: Iterable[Any]) -> None:
        for key in keys:
            self.add(key)

    def __len__(self) -> int:
        return self._size

    def __repr__(self) -> str:
        return f"IdSet({self._size} ids)"

    def _flush(self) -> None:
        """Move the recent digests into their buckets (each bucket stays sorted)."""
        np = self._np
        fresh = np.array(sorted(self._recent), dtype="S12")
        firsts = fresh.view(np.uint8).reshape(-1, 12)[:, 0]
        cuts = np.searchsorted(firsts, np.arange(257))
        for first in np.flatnonzero(cuts[1:] > cuts[:-1]):
            part = fresh[cuts[first]:cuts[first + 1]]
            bucket = self._buckets[first]
            self._buckets[first] = np.insert(bucket, bucket.searchsorted(part), part)
        self._recent.clear()
