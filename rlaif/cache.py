"""A content-addressed store of raw model results in SQLite.

Keys are hashes of (model id, kind, payload), e.g. the rendered prompt and the
option spellings, or the prompt, decoding settings and sample index. Values are
raw results (log-probs per spelling, generated text), so parsing can be redone
without calling the model, a killed run resumes, and a rerun costs nothing.

A cache is never a reason to stop a run, except a full disk:

* corrupt or truncated (not a database, a malformed image): it is set aside
  (renamed `results.sqlite.corrupt-TIME`, with a warning) and a fresh one is used;
* read-only (the file or its folder): it is read, and nothing is written (a warning says so);
* no cache can be created at all (a read-only folder): the run goes on without one;
* a full disk: a one-line error naming the cache's path and the ways out.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rlaif.errors import RlaifError

SCHEMA_VERSION = 1
log = logging.getLogger(__name__)
_SIDECARS = ("-wal", "-shm", "-journal")


def cache_key(model_id: str, kind: str, payload: Any) -> str:
    blob = json.dumps([SCHEMA_VERSION, model_id, kind, payload], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def fault(err: sqlite3.Error) -> str:
    """What went wrong, in four kinds: corrupt, readonly, full, or other."""
    name = getattr(err, "sqlite_errorname", "") or ""
    text = str(err).lower()
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "not a database" in text or "malformed" in text:
        return "corrupt"
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")) or "readonly" in text \
            or "unable to open" in text:
        return "readonly"
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return "full"
    return "other"


class ResultCache:
    """get_many / put_many over one SQLite file (WAL, safe for a killed process); see the module doc for faults."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.hits = 0
        self.misses = 0
        self.read_only = False
        self._db: sqlite3.Connection | None = self._open()

    # -- opening ----------------------------------------------------------------------------------------------

    def _open(self) -> sqlite3.Connection | None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(self.path.parent, os.W_OK) or (self.path.exists() and not os.access(self.path, os.W_OK)):
                return self._open_read_only()  # (a read-only mount says so even to root)
            return self._connect()
        except sqlite3.Error as err:
            kind = fault(err)
            if kind == "corrupt":
                self._set_aside(err)
                return self._connect()
            if kind == "full":
                raise self._full(err) from err
            if kind != "readonly":
                raise self._other(err) from err
        except PermissionError:
            pass
        return self._open_read_only()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), timeout=60)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL)")
            db.commit()
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _open_read_only(self) -> sqlite3.Connection | None:
        """Read a cache that cannot be written; without one, go on uncached. Either way, say so once."""
        self.read_only = True
        if not self.path.is_file():
            log.warning("Cannot create the raw-result cache %s (its folder is read-only); running without a cache "
                        "(pass --cache-dir DIR to keep one).", self.path)
            return None
        uri = f"file:{quote(str(self.path.resolve()))}"
        for mode in ("?mode=ro", "?mode=ro&immutable=1"):  # immutable: a WAL cache whose folder is read-only
            try:
                db = sqlite3.connect(uri + mode, uri=True, timeout=60)
                db.execute("SELECT count(*) FROM results").fetchone()
            except sqlite3.Error:
                continue
            log.warning("The raw-result cache %s is read-only: reading it, writing nothing new to it.", self.path)
            return db
        log.warning("Cannot read the raw-result cache %s; running without a cache (pass --cache-dir DIR).", self.path)
        return None

    def _set_aside(self, err: sqlite3.Error) -> None:
        """Rename a corrupt cache (and its WAL files) out of the way, so a fresh one takes its place."""
        db = getattr(self, "_db", None)  # None while opening
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()
            self._db = None
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            pass
        except OSError as move:
            raise RlaifError(f"The raw-result cache {self.path} is corrupt ({err}) and cannot be moved aside "
                             f"({move.strerror}): delete it, or pass --cache-dir DIR or --no-cache.") from move
        for suffix in _SIDECARS:
            with contextlib.suppress(OSError):
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
        log.warning("The raw-result cache %s was corrupt (%s): set it aside as %s and started a fresh one.",
                    self.path, err, aside.name)

    # -- reading and writing ----------------------------------------------------------------------------------

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        unique = list(dict.fromkeys(keys))
        found = self._guarded(lambda db: self._select(db, unique), default={})
        self.hits += len(found)
        self.misses += len(unique) - len(found)
        return found

    @staticmethod
    def _select(db: sqlite3.Connection, unique: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for start in range(0, len(unique), 500):
            chunk = unique[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, value in db.execute(f"SELECT key, value FROM results WHERE key IN ({marks})", chunk):
                found[key] = json.loads(value)
        return found

    def put_many(self, items: dict[str, Any]) -> None:
        if self.read_only or not items:
            return
        now = time.time()
        rows = [(key, json.dumps(value, ensure_ascii=False), now) for key, value in items.items()]

        def insert(db: sqlite3.Connection) -> None:
            with db:
                db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?)", rows)

        self._guarded(insert, default=None)

    def _guarded(self, operation: Callable[[sqlite3.Connection], Any], default: Any) -> Any:
        """Run `operation` on the database; a fault mid-run is handled as at opening (retried once when corrupt)."""
        for attempt in (1, 2):
            if self._db is None:
                return default
            try:
                return operation(self._db)
            except sqlite3.Error as err:
                kind = fault(err)
                if kind == "full":
                    raise self._full(err) from err
                if kind == "readonly" and not self.read_only:
                    log.warning("The raw-result cache %s became read-only (%s): writing nothing more to it.",
                                self.path, err)
                    self.read_only = True
                    return default
                if kind != "corrupt" or attempt == 2:
                    raise self._other(err) from err
                self._set_aside(err)
                self._db = self._connect()
        return default

    def _full(self, err: sqlite3.Error) -> RlaifError:
        return RlaifError(f"Cannot write the raw-result cache {self.path}: the disk is full ({err}). Free some "
                          "space, or pass --cache-dir DIR on another disk, or --no-cache.")

    def _other(self, err: sqlite3.Error) -> RlaifError:
        return RlaifError(f"The raw-result cache {self.path} failed ({err}); pass --cache-dir DIR for another "
                          "one, or --no-cache.")

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None


class NullCache:
    """No caching (`--no-cache`)."""

    hits = 0
    misses = 0

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        return {}

    def put_many(self, items: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
