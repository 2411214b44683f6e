"""The one resumable-run mechanism behind label, score, generate and revise.

A stage writes one JSONL output, `OUT`, with `OUT.meta.json` beside it. `Run`
holds everything that makes such an output safe to kill and resume:

* an exclusive lock (`OUT.lock`, see `output_lock`) for the whole run: a second
  writer gets a one-line error naming the first (pid and command);
* an output that is one of the inputs (after resolving links) is refused, in every mode;
* resume: the finished keys (ids) are read back, a torn last line is cut off,
  and a stage that writes groups (generate: all pairs of a prompt) drops a
  group a kill may have split; only the set of keys is kept, not the records;
  keys done but no longer in the input (`orphans`) are reported;
* the resume check: `OUT.meta.json` must exist and record the same
  output-changing settings and the same resolved model identity (hub commit,
  weight stamp, server fingerprint); a refusal names what differs;
* appends are flushed and fsynced a chunk at a time; a failed write (a full
  disk) is cut back to the last whole record and becomes a one-line error;
* records whose prompts do not fit the model (rlaif.limits) get a skip row,
  `{"id": ..., "skipped": "too long: N tokens > limit M"}`, which readers leave
  out with a count (`usable_rows`);
* the meta's `status` is `running`, then `done`, `interrupted` (Ctrl-C) or
  `failed` (an error), so a reader knows whether the file is complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from rlaif.errors import RlaifError
from rlaif.io import RecordWriter, check_output, drop_last_group, is_skip_row, read_jsonl, repair_tail, write_json
from rlaif.locks import lock_path, output_lock, write_failure  # noqa: F401 (lock_path: part of the API)

log = logging.getLogger(__name__)

# Settings that change how a run goes, not what it writes: a resumed run may change them freely.
RUN_ONLY = frozenset({"batch_tokens", "chunk_pairs", "chunk_prompts", "cache_dir", "no_cache", "backend_options",
                      "judge_backend_options", "on_too_long", "on_too_long_report"})


def meta_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


# Output-changing settings added after outputs existed: left out of the digest at these values (the behaviour
# before they existed), so those outputs still resume.
LATER_DEFAULTS = {"max_prompt_tokens": None}


def output_settings(config: Any) -> dict[str, Any]:
    """The output-changing fields of a config dataclass, as JSON-able values."""
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {k: _plain(v) for k, v in values.items()
            if k not in RUN_ONLY and not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}


def config_digest(config: Any) -> str:
    """A short hash of a config's output-changing fields (stored in `OUT.meta.json`)."""
    keep = output_settings(config)
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def read_meta(out: str | Path) -> dict[str, Any]:
    """The `OUT.meta.json` of a finished or running job, or {} when there is none (or it is torn)."""
    try:
        data = json.loads(meta_path(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file (links resolved; a missing path compares by its resolved name)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def refuse_input_as_output(out: str | Path, inputs: Iterable[str | Path | None]) -> None:
    """Refuse an output (or its meta or lock file) that is one of the inputs, or lies inside an input folder."""
    for item in inputs:
        if item is None:
            continue
        if same_file(out, item) or (Path(item).is_dir() and Path(out).resolve().is_relative_to(Path(item).resolve())):
            raise RlaifError(f"--out {out} is the input {item}: writing it would destroy the input. "
                             "Choose another --out.")
        if same_file(meta_path(out), item) or same_file(lock_path(out), item):
            raise RlaifError(f"--out {out} would overwrite the input {item} with its meta or lock file. "
                             "Choose another --out.")


# -- the run ------------------------------------------------------------------------------------------------------


class Run:
    """One resumable output file: `with Run(...) as run:` locks it and reads what is done.

    `mode`: "new" (the file must not exist), "resume" (continue it; a new file is fine),
    "overwrite" (replace it). `group_key`: records that must land together (a killed
    run's last, maybe partial group is dropped and redone).
    """

    def __init__(self, out: str | Path, config: Any, mode: str = "resume", inputs: Iterable[Any] = (),
                 key: str = "id", group_key: str | None = None, stage: str = "run"):
        if mode not in ("new", "resume", "overwrite"):
            raise ValueError(f"mode must be new, resume or overwrite, not {mode!r}")
        self.out = Path(out)
        self.config = config
        self.mode = mode
        self.inputs = [i for i in inputs if i is not None]
        self.key = key
        self.group_key = group_key
        self.stage = stage
        self.digest = config_digest(config)
        self.settings = output_settings(config)
        self.done: set[str] = set()
        self.skipped = 0  # skip rows in the file (records whose prompts do not fit the model)
        self.orphans = 0  # keys done but not in this run's input (the input changed)
        self._orphans_told = False
        self.old_meta: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
        self.started = time.time()
        self._lock: contextlib.ExitStack | None = None
        self._writer: RecordWriter | None = None

    # -- entering: checks, lock, what is done ------------------------------------------------------------------

    def __enter__(self) -> Run:
        check_output(self.out)
        refuse_input_as_output(self.out, self.inputs)
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(output_lock(self.out))
        try:
            if self.out.exists() and self.mode == "new":  # checked under the lock: no other writer can race it
                raise RlaifError(f"{self.out} exists: pass --resume to continue it or --overwrite to replace it.")
            self._read_done()
        except BaseException:
            self._release()
            raise
        return self

    def _read_done(self) -> None:
        if self.mode == "overwrite":
            for path in (self.out, meta_path(self.out)):
                path.unlink(missing_ok=True)
            return
        if not self.out.exists():
            return
        self.old_meta = read_meta(self.out)
        if not self.old_meta:
            raise RlaifError(f"{self.out} exists but {meta_path(self.out).name} is missing or unreadable, so its "
                             "settings are unknown: pass --overwrite to replace it, or choose another --out.")
        self._check_settings(self.old_meta)
        if self.group_key and self.old_meta.get("status") != "done":
            drop_last_group(self.out, self.group_key)  # a killed run may have cut the last group short
        else:
            repair_tail(self.out)
        for row in read_jsonl(self.out):
            if self.key in row:
                self.done.add(str(row[self.key]))
                self.skipped += is_skip_row(row)

    def _check_settings(self, old: dict[str, Any]) -> None:
        if old.get("config_digest") == self.digest:
            return
        before = old.get("settings") or {}
        differ = sorted(k for k in set(before) | set(self.settings) if before.get(k) != self.settings.get(k))
        detail = "; ".join(f"{k}: {before.get(k)!r} then, {self.settings.get(k)!r} now" for k in differ[:4])
        raise RlaifError(f"{self.out} was made with other settings ({detail or 'unknown'}); pass --overwrite to "
                         "replace it, or choose another --out.")

    # -- the run ----------------------------------------------------------------------------------------------

    def start(self, model_id: str | None, **meta: Any) -> None:
        """Check the resolved model identity against the file's, then mark the run `running`."""
        old_model = self.old_meta.get("model")
        if self.done and old_model and model_id and old_model != model_id:
            raise RlaifError(f"{self.out} was made by model {old_model}, but --model now resolves to {model_id} "
                             "(other weights or another served model): pass --overwrite, or choose another --out.")
        self.meta = {"stage": self.stage, "config": _plain(dataclasses.asdict(self.config))
                     if dataclasses.is_dataclass(self.config) else self.config,
                     "settings": self.settings, "config_digest": self.digest, "model": model_id, **meta}
        self._write_meta("running")

    def todo(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The records whose key is not done yet (input order). Pass the whole input: once it is read,
        `orphans` counts the keys in the file that the input no longer has (reported as a warning)."""
        seen: set[str] = set()
        for record in records:
            key = str(record[self.key])
            seen.add(key)
            if key not in self.done:
                yield record
        self.orphans = len(self.done - seen)
        if self.orphans and not self._orphans_told:  # a stage may read its input more than once: say it once
            self._orphans_told = True
            log.warning("%s holds %d record(s) whose %s is not in this input (kept; did the input change?).",
                        self.out, self.orphans, self.key)

    def write(self, rows: Iterable[dict[str, Any]]) -> int:
        """Append rows in one write and one fsync; returns how many. A failed write (a full disk) is cut
        back to the last whole record, and raised as a one-line error."""
        rows = list(rows)
        size = self.out.stat().st_size if self.out.exists() else 0
        try:
            if self._writer is None:
                self._writer = RecordWriter(self.out)
            self._writer.write_all(rows)
        except OSError as err:
            self._drop_writer()
            with contextlib.suppress(OSError):
                os.truncate(self.out, size)
            raise write_failure(self.out, err, f"Its {len(self.done)} finished records are kept.") from err
        self.done.update(str(r[self.key]) for r in rows if self.key in r)
        self.skipped += sum(is_skip_row(r) for r in rows)
        return len(rows)

    def finish(self, **summary: Any) -> dict[str, Any]:
        """Mark the run `done` with its summary (and the file's skip rows and orphans).

        A run that found everything done may call it without `start`: the meta is the file's,
        with this run's figures."""
        if not self.meta:
            self.meta = dict(self.old_meta)
        self.meta.update({"skipped_too_long": self.skipped, "orphans": self.orphans, **summary})
        self._write_meta("done", summary.get("seconds_this_run"))
        return self.meta

    def _write_meta(self, status: str, seconds: float | None = None) -> None:
        self.meta["status"] = status
        self.meta["seconds_this_run"] = round(time.time() - self.started, 2) if seconds is None else seconds
        path = meta_path(self.out)
        try:
            write_json(path, self.meta)
        except OSError as err:
            with contextlib.suppress(OSError):
                path.with_name(path.name + ".tmp").unlink()
            raise write_failure(path, err, f"{self.out} keeps its {len(self.done)} finished records.") from err

    def _drop_writer(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.close()  # may try to flush the rest of a failed write again
            self._writer = None

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
            if kind is not None and self.meta and self.meta.get("status") == "running":
                with contextlib.suppress(RlaifError):  # the disk may be full: keep the first error
                    self._write_meta("interrupted" if issubclass(kind, KeyboardInterrupt) else "failed")
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of `size` items from any iterable (the unit written between two flushes)."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_chunks(run: Run, records: Iterable[dict[str, Any]], work: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
               chunk: int, bar: Any = None, skip: dict[str, str] | None = None) -> int:
    """Process the records not done yet `chunk` at a time, appending each chunk's rows; returns records done.

    `skip`: key -> reason for records left out (their prompts do not fit the model): each gets a skip row.
    """
    skip = skip or {}
    count = 0
    for part in batched((r for r in records if str(r[run.key]) not in run.done), chunk):
        keep = [r for r in part if str(r[run.key]) not in skip]
        rows = work(keep) if keep else []
        rows += [skip_row(run.key, r, skip[str(r[run.key])]) for r in part if str(r[run.key]) in skip]
        run.write(rows)
        count += len(part)
        if bar is not None:
            bar.update(len(part))
    return count


def rows_by_key(out: str | Path, keys: Iterable[str], key: str = "id") -> dict[str, dict[str, Any]]:
    """The output's rows for `keys` (for returning small results to Python callers); skip rows included."""
    wanted = set(keys)
    return {str(row[key]): row for row in read_jsonl(out) if str(row.get(key)) in wanted} if Path(out).exists() else {}


# -- skip rows and the readers of outputs ---------------------------------------------------------------------------


def skip_row(key: str, record: dict[str, Any], reason: str) -> dict[str, Any]:
    """The row written for a record left out: its key (and id) and why."""
    return {"id": record.get("id", record[key]), key: record[key], "skipped": reason}



def usable_rows(rows: Iterable[dict[str, Any]], path: str | Path, key: str = "id") -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The rows of an rlaif output that hold results: skip rows and repeated keys left out (the first kept),
    with a warning and the counts {"skipped": n, "duplicates": n}."""
    kept, seen = [], set()
    counts = {"skipped": 0, "duplicates": 0}
    for row in rows:
        if is_skip_row(row):
            counts["skipped"] += 1
            continue
        value = row.get(key)
        if value not in (None, ""):
            if str(value) in seen:
                counts["duplicates"] += 1
                continue
            seen.add(str(value))
        kept.append(row)
    if counts["skipped"]:
        log.warning("%s: left out %d record(s) skipped when it was made (too long for the model).", path,
                    counts["skipped"])
    if counts["duplicates"]:
        log.warning("%s: left out %d record(s) whose %s repeats an earlier one (kept the first of each; two runs "
                    "wrote to this file?).", path, counts["duplicates"], key)
    return kept, counts
