"""A content-addressed store of raw model results in SQLite.

Keys are hashes of (model id, kind, payload), e.g. the rendered prompt and the
option spellings, or the prompt, decoding settings and sample index. Values are
raw results (log-probs per spelling, generated text), so parsing can be redone
without calling the model, a killed run resumes, and a rerun costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def cache_key(model_id: str, kind: str, payload: Any) -> str:
    blob = json.dumps([SCHEMA_VERSION, model_id, kind, payload], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResultCache:
    """get_many / put_many over one SQLite file (WAL, safe for a killed process)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL)")
        self._db.commit()
        self.hits = 0
        self.misses = 0

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, value in self._db.execute(f"SELECT key, value FROM results WHERE key IN ({marks})", chunk):
                found[key] = json.loads(value)
        self.hits += len(found)
        self.misses += len(unique) - len(found)
        return found

    def put_many(self, items: dict[str, Any]) -> None:
        now = time.time()
        rows = [(key, json.dumps(value, ensure_ascii=False), now) for key, value in items.items()]
        with self._db:
            self._db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?)", rows)

    def close(self) -> None:
        self._db.close()


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
