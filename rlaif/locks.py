"""The exclusive lock an output is written under, and the one-line error of a failed write.

`output_lock(OUT)` holds `OUT.lock` (an flock, so a killed holder releases it)
for as long as a run writes OUT; a second writer gets a one-line error naming
the first (its pid and command). The lock file is removed when the block ends;
a process that opened it just before is told by its inode and takes the new one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from rlaif.errors import RlaifError


def lock_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def output_lock(path: str | Path) -> Iterator[None]:
    """Hold `PATH.lock` exclusively while the block runs; a second holder gets a one-line error naming the first.

    The lock is an flock, so a killed holder releases it; the file is removed when the block ends.
    """
    lock = lock_path(path)
    handle = _acquire(lock, Path(path))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # while still holding it: a process that opened the old file sees it gone and retries
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _acquire(lock: Path, what: Path) -> IO[str]:
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = lock.open("a+", encoding="utf-8")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise RlaifError(f"{what} is being written by {holder}; wait for it to finish, or choose "
                                 "another output.") from None
            if _still_there(handle, lock):
                break
            handle.close()  # its last holder removed the file between our open and our lock: take the new one
        handle.seek(0)
        handle.truncate()
        handle.write(f"rlaif pid {os.getpid()} ({' '.join(sys.argv[:3])[:120]})\n")
        handle.flush()
        return handle
    except OSError as err:
        raise RlaifError(f"Cannot write {what}: {err.strerror or err} ({lock}). Choose another output.") from err


def _still_there(handle: IO[str], lock: Path) -> bool:
    try:
        return os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino
    except FileNotFoundError:
        return False


def write_failure(path: Path, err: OSError, kept: str) -> RlaifError:
    """The one-line error of a failed write: which path, why, and what is kept."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return RlaifError(f"Cannot write {path}: the disk is full ({err.strerror}). {kept} Free some space (or "
                          "choose an --out on another disk) and rerun with --resume.")
    return RlaifError(f"Cannot write {path}: {err.strerror or err}. {kept} Fix that, then rerun with --resume.")
