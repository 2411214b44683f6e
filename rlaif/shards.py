"""Resumable stage outputs for one process or many: `open_run` gives a Run-like object either way.

One process (no launcher, no shards left over): a `StageRun`, the `runs.Run` on
OUT with its finished ids kept as an `IdSet`, the input scanned once for what is
left (`scan`) and then streamed (`todo`), so nothing holds the input or output.

Under `accelerate launch` / `torchrun` (or when an earlier launched run left
shards): a `ShardedRun`. Rank K of N runs a `StageRun` on its own shard,
`OUT.shards/rank-K-of-N.jsonl`, over the records `shard_of(id, N) == K` that no
file has yet (OUT itself, or the shards of a run with another N). Rank 0 holds
OUT's lock and meta for the whole job, and when every rank has finished it
merges OUT and every shard into a new OUT, in input order, the file one process
would have written, then removes the shards. A job killed at any point and
restarted with --resume, with any N, finishes with one record per input.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rlaif.distributed import Coordinator, LocalCoordinator, World, shard_of
from rlaif.errors import RlaifError
from rlaif.idset import IdSet
from rlaif.io import check_output, drop_last_group, read_jsonl, repair_tail
from rlaif.runs import Run, meta_path, read_meta
from rlaif.shard_merge import merge_outputs

log = logging.getLogger(__name__)
Facts = Callable[[Path], dict[str, Any]]


def shard_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".shards")


def shard_path(out: str | Path, rank: int, size: int) -> Path:
    return shard_dir(out) / f"rank-{rank}-of-{size}.jsonl"


def shard_files(out: str | Path) -> list[Path]:
    folder = shard_dir(out)
    return sorted(p for p in folder.glob("rank-*-of-*.jsonl") if p.is_file()) if folder.is_dir() else []


def open_run(out: str | Path, config: Any, mode: str = "resume", inputs: Iterable[Any] = (), key: str = "id",
             group_key: str | None = None, stage: str = "run") -> StageRun | ShardedRun:
    """The run of one stage on `out`: sharded under a launcher (or to finish shards), else one process."""
    world = World.from_env()
    if world.size == 1 and not shard_files(out):
        return StageRun(out, config, mode, inputs, key, group_key, stage)
    coordinator = Coordinator(world) if world.size > 1 else LocalCoordinator()
    return ShardedRun(out, config, mode, inputs, key, group_key, stage, coordinator)


class StageRun(Run):
    """A `runs.Run` for inputs of any size: ids in an IdSet; `scan` counts, `todo` streams.

    The input's records are matched by their `id` (generate's rows carry it as `prompt_id`).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.done = IdSet()
        self.total = 0  # records in the input (after `scan`)
        self.todo_here = 0  # of them, not done yet
        self.todo_anywhere = 0

    def __enter__(self) -> StageRun:
        super().__enter__()
        if not isinstance(self.done, IdSet):  # keep the memory bound whatever Run filled in
            self.done = IdSet(self.done)
        return self

    @property
    def idle(self) -> bool:
        """Nothing left to do (so a finished output need not load the model)."""
        return self.todo_anywhere == 0

    def scan(self, records: Iterable[dict[str, Any]]) -> int:
        """Read the input once (a stream is checked on the way): how many records it has and how many are left."""
        total = done = 0
        for record in records:
            total += 1
            done += str(record["id"]) in self.done
        self.total, self.todo_here = total, total - done
        self.todo_anywhere = self.todo_here
        self.orphans = len(self.done) - done
        _warn_orphans(self.out, self.orphans, self.key)
        return self.todo_here

    def todo(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The records not done yet, in input order (streamed)."""
        return (record for record in records if str(record["id"]) not in self.done)

    def start(self, model_id: str | None, **meta: Any) -> None:
        super().start(model_id, **{"world_size": 1, **meta})  # a launched job's ranks pass theirs

    def progress_bar(self, unit: str, desc: str, disable: bool = False) -> Any:
        return tqdm(total=self.total, initial=self.total - self.todo_here, unit=unit, desc=desc, disable=disable)

    def finish(self, file_facts: Facts | None = None, **summary: Any) -> dict[str, Any]:
        """Mark the output done; `file_facts(OUT)`: counts read from the finished file, added to the meta."""
        return super().finish(**summary, **(file_facts(self.out) if file_facts else {}))


def _warn_orphans(out: Path, orphans: int, key: str) -> None:
    if orphans:
        log.warning("%s holds %d record(s) whose %s is not in this input (kept; did the input change?).",
                    out, orphans, key)


class _Done:
    """The ids of this rank's records done anywhere: in its own shard, or in OUT or an old shard."""

    def __init__(self, own: IdSet, elsewhere: IdSet):
        self.own, self.elsewhere = own, elsewhere

    def __contains__(self, key: Any) -> bool:
        return key in self.own or key in self.elsewhere

    def __len__(self) -> int:
        return len(self.own) + len(self.elsewhere)


class ShardedRun:
    """One rank's part of a launched stage, with the same calls as a StageRun (see the module docstring).

    `finish(**summary)`: this rank's counts are summed over the ranks and its seconds give the
    longest; facts about the whole input belong in `start`, facts about the output in `file_facts`.
    """

    def __init__(self, out: str | Path, config: Any, mode: str, inputs: Iterable[Any], key: str,
                 group_key: str | None, stage: str, coordinator: LocalCoordinator):
        self.out, self.config, self.mode = Path(out), config, mode
        self.inputs = [i for i in inputs if i is not None]
        self.key, self.group_key, self.stage = key, group_key, stage
        self.coordinator = coordinator
        self.world = coordinator.world
        self.final: StageRun | None = None  # rank 0: OUT's lock and meta
        self.shard: StageRun | None = None
        self.elsewhere = IdSet()
        self.old_meta: dict[str, Any] = {}
        self.unmerged = False
        self.total = self.todo_here = self.todo_anywhere = self.orphans = 0
        self._records: Iterable[dict[str, Any]] = ()
        self._done = _Done(IdSet(), self.elsewhere)
        self._stack = contextlib.ExitStack()

    def _run(self, path: Path, mode: str) -> StageRun:
        return StageRun(path, self.config, mode, self.inputs, self.key, self.group_key, self.stage)

    def __enter__(self) -> ShardedRun:
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.coordinator)
            self._prepare(stack)
            self.shard = stack.enter_context(self._run(shard_path(self.out, self.world.rank, self.world.size), "resume"))
            self._read_elsewhere()
            self._done = _Done(self.shard.done, self.elsewhere)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.__exit__(*exc)

    def _prepare(self, stack: contextlib.ExitStack) -> None:
        """Rank 0 locks OUT, applies --resume/--overwrite to it and its shards, and tells the others."""
        if self.world.is_main:
            try:
                self.final = stack.enter_context(self._run(self.out, self.mode))
                info = {"old_meta": self.final.old_meta, "unmerged": self._prepare_shards()}
            except RlaifError as err:
                self.coordinator.publish("prepare", {"error": str(err)})
                raise
            self.coordinator.publish("prepare", info)
        else:
            info = self.coordinator.receive("prepare")
            if "error" in info:
                raise RlaifError(info["error"])
        self.old_meta, self.unmerged = info["old_meta"], info["unmerged"]

    def _prepare_shards(self) -> bool:
        folder = shard_dir(self.out)
        check_output(folder, directory=True)
        if self.mode == "overwrite":
            shutil.rmtree(folder, ignore_errors=True)
        files = shard_files(self.out)
        if files and self.mode == "new":
            raise RlaifError(f"{folder} holds the shards of an unfinished run of {self.out}: pass --resume to finish "
                             "it or --overwrite to replace it.")
        for path in files:
            meta = read_meta(path)
            if not meta:
                raise RlaifError(f"{path} has no readable {meta_path(path).name}, so its settings are unknown: pass "
                                 f"--overwrite to replace {self.out} and its shards.")
            Run(path, self.config)._check_settings(meta)
            if self.group_key and meta.get("status") != "done":
                drop_last_group(path, self.group_key)  # a killed rank may have cut its last group short
            else:
                repair_tail(path)
        return bool(files)

    def _read_elsewhere(self) -> None:
        """This rank's ids already in OUT or in the shards of a run with another N (its own are in `shard.done`)."""
        mine = f"-of-{self.world.size}.jsonl"
        sources = ([self.out] if self.out.exists() else []) + [p for p in shard_files(self.out)
                                                                  if not p.name.endswith(mine)]
        for path in sources:
            for row in read_jsonl(path):
                value = row.get(self.key)
                if value is not None and shard_of(str(value), self.world.size) == self.world.rank \
                        and str(value) not in self.shard.done:
                    self.elsewhere.add(str(value))

    # -- the Run calls ------------------------------------------------------------------------------------------

    @property
    def done(self) -> _Done:
        return self._done

    @property
    def idle(self) -> bool:
        return self.todo_anywhere == 0 and not self.unmerged

    def scan(self, records: Iterable[dict[str, Any]]) -> int:
        """Count this rank's records and what is left of them; every rank learns the totals."""
        self._records = records
        total = mine = done = 0
        own = self.done
        for record in records:
            total += 1
            key = str(record["id"])
            if shard_of(key, self.world.size) == self.world.rank:
                mine += 1
                done += key in own
        counts = self.coordinator.all_gather([total, mine - done, len(own) - done])
        if len({row[0] for row in counts}) > 1:
            raise RlaifError(f"The ranks read inputs of different sizes ({', '.join(str(r[0]) for r in counts)} "
                             "records): give every process the same input.")
        self.total, self.todo_here, self.orphans = total, mine - done, len(own) - done
        self.todo_anywhere = sum(row[1] for row in counts)
        if self.world.is_main:
            _warn_orphans(self.out, sum(row[2] for row in counts), self.key)
        return self.todo_here

    def todo(self, records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        own, rank, size = self.done, self.world.rank, self.world.size
        return (r for r in records if shard_of(str(r["id"]), size) == rank and str(r["id"]) not in own)

    def start(self, model_id: str | None, **meta: Any) -> None:
        self.shard.start(model_id, **meta, world_size=self.world.size, rank=self.world.rank)
        self.coordinator.post("model", model_id)
        if self.final is not None:
            self.final.start(model_id, **meta, world_size=self.world.size)

    def write(self, rows: Iterable[dict[str, Any]]) -> int:
        count = self.shard.write(rows)
        self.coordinator.check()
        return count

    def progress_bar(self, unit: str, desc: str, disable: bool = False) -> GlobalBar:
        return GlobalBar(self.coordinator, self.total, self.total - self.todo_anywhere, unit, desc, disable)

    def finish(self, file_facts: Facts | None = None, **summary: Any) -> dict[str, Any]:
        """This rank's shard is done; rank 0 waits for all, merges, writes OUT's meta; all return that meta.

        An idle run (everything was done and merged) only refreshes OUT's meta with this run's figures."""
        if self.idle:
            if not self.world.is_main:
                return self._receive_final()
            meta = self.final.finish(**summary)
            self._publish_final(meta)
            return meta
        self.shard.finish(**summary)
        self.coordinator.post("summary", {k: v for k, v in summary.items() if _is_number(v)})
        if not self.world.is_main:
            return self._receive_final()
        totals = combine(self.coordinator.collect("summary"))
        self._check_models(self.coordinator.collect("model"))
        counts = merge_outputs(self.out, self._records, self.key, self.group_key,
                               ([self.out] if self.out.exists() else []) + shard_files(self.out))
        facts = file_facts(self.out) if file_facts else {}
        meta = self.final.finish(**totals, **facts, skipped_too_long=counts["skipped"], orphans=counts["orphans"])
        shutil.rmtree(shard_dir(self.out), ignore_errors=True)
        self._publish_final(meta)
        return meta

    def _receive_final(self) -> dict[str, Any]:
        meta = self.coordinator.receive("final")
        self.coordinator.post("ack", True)
        return meta

    def _publish_final(self, meta: dict[str, Any]) -> None:
        """Give every rank OUT's meta, and wait until each has it (without a launcher, rank 0 holds the store)."""
        self.coordinator.publish("final", meta)
        self.coordinator.post("ack", True)
        try:
            self.coordinator.collect("ack")
        except RlaifError as err:  # OUT is whole: a rank lost now changes nothing
            log.warning("%s is finished and whole; after that, %s.", self.out, self.coordinator.failure or err)

    def _check_models(self, models: list[str | None]) -> None:
        """Every rank, and every old shard, must come from one model."""
        old = {p.name: read_meta(p).get("model") for p in shard_files(self.out)}
        ours = models[0]
        odd = [f"rank {r}: {m}" for r, m in enumerate(models) if m != ours]
        odd += [f"{name}: {m}" for name, m in old.items() if m and ours and m != ours]
        if odd:
            raise RlaifError(f"The shards of {self.out} come from different models (rank 0: {ours}; "
                             f"{'; '.join(odd[:3])}): give every process the same --model, or pass --overwrite.")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def combine(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The ranks' counts summed; their seconds (floats) the longest."""
    out: dict[str, Any] = {}
    for summary in summaries:
        for key, value in summary.items():
            if key not in out:
                out[key] = value
            else:
                out[key] = max(out[key], value) if isinstance(value, float) else out[key] + value
    return out


class GlobalBar:
    """One progress bar for the whole job, on rank 0: every rank adds its records to the store's counter."""

    def __init__(self, coordinator: LocalCoordinator, total: int, initial: int, unit: str, desc: str, disable: bool):
        self.coordinator = coordinator
        self.bar = tqdm(total=total, initial=initial, unit=unit, desc=desc,
                        disable=disable or not coordinator.world.is_main)
        self._shown = 0
        self._lock = threading.Lock()  # the heartbeat thread refreshes it too
        if coordinator.world.is_main:
            coordinator.on_beat = self.refresh

    def update(self, count: int) -> None:
        self.coordinator.add_progress(count)
        if self.coordinator.world.is_main:
            self.refresh()

    def refresh(self) -> None:
        with self._lock:
            done = self.coordinator.progress()
            if done > self._shown and not self.bar.disable:
                self.bar.update(done - self._shown)
            self._shown = max(self._shown, done)

    def __enter__(self) -> GlobalBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.coordinator.on_beat = None
        with self._lock:
            self.bar.close()
            self.bar.disable = True


def output_rows(out: str | Path, records: Iterable[dict[str, Any]], meta: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The rows of a finished OUT, streamed, for a CLI's summary: all of them, or, when OUT also holds
    records the input no longer has (`meta["orphans"]`), only those of `records`."""
    wanted = IdSet(str(record["id"]) for record in records) if meta.get("orphans") else None
    for row in read_jsonl(out):
        if wanted is None or str(row.get("id")) in wanted:
            yield row
