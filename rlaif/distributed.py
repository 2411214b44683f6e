"""Several processes, one job: ranks from the launcher, a stable split of the records, and what they share.

`accelerate launch` and `torchrun` start N copies of a command with RANK,
WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set
(mpirun's own variables are read too). `World.from_env()` reads them; a record
belongs to rank `shard_of(id, N)`, a hash of its id alone, so the split does not
depend on how many records there are or in which order.

`Coordinator` joins the job's process group (torch.distributed over gloo, on
CPU whatever the devices) and uses its key-value store for everything that
must not wait on the slowest rank: a global progress counter (one bar on rank
0), a heartbeat per rank, the first failure's message, and small values one
rank publishes for the others. A rank that raises posts its error and every
other rank stops after its current chunk with that error; a rank that is killed
stops beating, and the others stop once it has been silent for
`RLAIF_DIST_TIMEOUT` seconds (default 300), if the launcher has not stopped
them first (torchrun and accelerate kill the other ranks when one dies). The
one collective, the all-gather of the counts after reading the input, is
bounded by the same timeout.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from rlaif.errors import RlaifError

_ENV = {  # torchrun / accelerate first, then MPICH / Intel MPI, Open MPI, MVAPICH
    "rank": ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"),
    "size": ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"),
    "local_rank": ("LOCAL_RANK", "MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK"),
    "local_size": ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE"),
}
DEFAULT_TIMEOUT = 300.0
_calls = 0  # sharded runs started by this process: each gets its own keys in the store


@dataclass(frozen=True)
class World:
    """This process's place in a launched job (rank 0 of 1 when nothing launched it)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> World:
        env = os.environ if env is None else env
        if env.get("RLAIF_DISTRIBUTED", "").strip().lower() in ("0", "false", "no", "off"):
            return cls()
        size = _env_int(env, "size", 1)
        if size <= 1:
            _refuse_lone_accelerate(env)
            return cls()
        rank, local_rank = _env_int(env, "rank", -1), _env_int(env, "local_rank", 0)
        local_size = _env_int(env, "local_size", size)
        if not 0 <= rank < size or not 0 <= local_rank < max(local_size, 1):
            raise RlaifError(f"The launcher's ranks make no sense (RANK {rank}, WORLD_SIZE {size}, LOCAL_RANK "
                             f"{local_rank}, LOCAL_WORLD_SIZE {local_size}): launch with accelerate launch or torchrun.")
        return cls(rank, size, local_rank, max(local_size, 1))


def _env_int(env: Mapping[str, str], what: str, default: int) -> int:
    for name in _ENV[what]:
        text = env.get(name, "").strip()
        if text:
            try:
                return int(text)
            except ValueError:
                raise RlaifError(f"{name}={text!r} is not a whole number: launch with accelerate launch or "
                                 "torchrun, which set it.") from None
    return default


def _refuse_lone_accelerate(env: Mapping[str, str]) -> None:
    """On CPUs, `accelerate launch [--cpu] --num_processes N` starts ONE process (its simple launcher sets
    MASTER_ADDR but no ranks; several CPU processes need mpirun): say so rather than run alone."""
    if "ACCELERATE_USE_CPU" in env and env.get("MASTER_ADDR"):
        raise RlaifError("accelerate launch started one process, not --num_processes of them (without GPUs, or with "
                         "--cpu, accelerate needs mpirun and --mpirun_hostfile for more). On CPUs launch with "
                         "`accelerate launch --multi_gpu --num_processes N` (it runs on CPU too, over gloo) or "
                         "`torchrun --nproc-per-node N`; or set RLAIF_DISTRIBUTED=0 to run this one process alone.")


def is_main_process() -> bool:
    """Rank 0, or no launcher: the process that prints summaries and writes reports."""
    return World.from_env().is_main


def shard_of(key: str, size: int) -> int:
    """The rank that owns record `key` among `size`: a hash of the key alone (stable across runs and machines)."""
    if size <= 1:
        return 0
    digest = hashlib.blake2b(str(key).encode("utf-8"), digest_size=8, person=b"rlaif-shard").digest()
    return int.from_bytes(digest, "big") % size


def dist_timeout() -> float:
    text = os.environ.get("RLAIF_DIST_TIMEOUT", "").strip()
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        value = -1.0
    if value <= 0:
        raise RlaifError(f"RLAIF_DIST_TIMEOUT must be a number of seconds above 0, not {text!r}.")
    return value


# -- what the ranks share -------------------------------------------------------------------------------------------


class LocalCoordinator:
    """The coordinator of a job of one process (finishing shards alone): the same calls, no other rank."""

    def __init__(self) -> None:
        self.world = World()
        self.failure: str | None = None
        self.on_beat: Callable[[], None] | None = None
        self._values: dict[str, Any] = {}
        self._progress = 0

    def __enter__(self) -> LocalCoordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def check(self) -> None:
        pass

    def publish(self, name: str, value: Any) -> None:
        self._values[name] = value

    def receive(self, name: str) -> Any:
        return self._values[name]

    def post(self, name: str, value: Any) -> None:
        self._values[f"{name}/0"] = value

    def collect(self, name: str) -> list[Any]:
        return [self._values[f"{name}/0"]]

    def all_gather(self, values: list[int]) -> list[list[int]]:
        return [list(values)]

    def add_progress(self, count: int) -> None:
        self._progress += count

    def progress(self) -> int:
        return self._progress


class Coordinator(LocalCoordinator):
    """The job's store and gloo group, a heartbeat thread, and the first failure (see the module docstring)."""

    def __init__(self, world: World, timeout: float | None = None):
        super().__init__()
        global _calls
        _calls += 1
        self.world = world
        self.timeout = timeout or dist_timeout()
        self._store, self._group = _join(world, self.timeout)
        self._prefix = f"rlaif/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{_calls}"
        self._beats: dict[int, tuple[int, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._monitor, name="rlaif-heartbeat", daemon=True)

    def _key(self, name: str) -> str:
        return f"{self._prefix}/{name}"

    def __enter__(self) -> Coordinator:
        self._store.add(self._key(f"beat/{self.world.rank}"), 1)
        self._thread.start()
        return self

    def __exit__(self, kind: Any, error: Any, tb: Any) -> None:
        self._stop.set()
        if kind is not None:
            self._post_failure(kind, error)
        self._thread.join(timeout=5)

    def _post_failure(self, kind: Any, error: Any) -> None:
        if issubclass(kind, KeyboardInterrupt):
            why = "was interrupted (Ctrl-C)"
        elif isinstance(error, RlaifError):
            why = f"failed: {error}"
        else:
            why = f"failed: {kind.__name__}: {error}"
        try:  # the first failure wins; a rank stopping because of another's does not overwrite it
            self._store.compare_set(self._key("failed"), "", f"rank {self.world.rank} {why}")
        except Exception:  # noqa: BLE001 (the store may be gone with rank 0; the launcher reports the exit)
            pass

    # -- waiting without hanging --------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise the failure of another rank (or of the store) if there is one."""
        if self.failure:
            raise RlaifError(f"{self.failure.rstrip('.')}. Rank {self.world.rank} stopped too; finished records are "
                             "kept: fix that and rerun the same command with --resume.")

    def _monitor(self) -> None:
        interval = min(1.0, self.timeout / 10)
        while not self._stop.wait(interval):
            try:
                self._store.add(self._key(f"beat/{self.world.rank}"), 1)
                self.failure = self.failure or self._peer_failure()
                if self.on_beat is not None:
                    self.on_beat()
            except Exception as err:  # noqa: BLE001 (any store error means rank 0 or the launcher is gone)
                self.failure = self.failure or self._lost(err)
                return

    def _peer_failure(self) -> str | None:
        if self._store.check([self._key("failed")]):
            return self._store.get(self._key("failed")).decode("utf-8", "replace")
        now = time.monotonic()
        for rank in range(self.world.size):
            if rank == self.world.rank:
                continue
            count = self._store.add(self._key(f"beat/{rank}"), 0)
            last = self._beats.get(rank)
            if last is None or last[0] != count:
                self._beats[rank] = (count, now)
            elif now - last[1] > self.timeout:
                return (f"rank {rank} stopped responding (no heartbeat for {self.timeout:.0f} s: killed, or its "
                        "machine hung)")
        return None

    def _lost(self, err: BaseException) -> str:
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"lost contact with the job's store at {where} (rank 0 or the launcher stopped: {first})"

    def _wait(self, keys: list[str]) -> None:
        delay = 0.01
        while True:
            try:
                if self._store.check(keys):
                    return
            except Exception as err:  # noqa: BLE001
                self.failure = self.failure or self._lost(err)
            self.check()
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    # -- values -------------------------------------------------------------------------------------------------

    def publish(self, name: str, value: Any) -> None:
        """Rank 0's value for every rank (`receive` waits for it)."""
        self._store.set(self._key(name), json.dumps(value, default=str))

    def receive(self, name: str) -> Any:
        self._wait([self._key(name)])
        return json.loads(self._store.get(self._key(name)))

    def post(self, name: str, value: Any) -> None:
        """This rank's value (`collect` waits for every rank's)."""
        self._store.set(self._key(f"{name}/{self.world.rank}"), json.dumps(value, default=str))

    def collect(self, name: str) -> list[Any]:
        keys = [self._key(f"{name}/{rank}") for rank in range(self.world.size)]
        self._wait(keys)
        return [json.loads(self._store.get(key)) for key in keys]

    def all_gather(self, values: list[int]) -> list[list[int]]:
        """Every rank's `values` (whole numbers), in rank order: one gloo all-gather, bounded by the timeout."""
        import torch  # noqa: PLC0415
        import torch.distributed as dist  # noqa: PLC0415

        mine = torch.tensor(values, dtype=torch.int64)
        gathered = [torch.zeros_like(mine) for _ in range(self.world.size)]
        try:
            dist.all_gather(gathered, mine, group=self._group)
        except RuntimeError as err:
            self.failure = self.failure or self._peer_failure_now() or f"lost contact with another rank ({err})"
            self.check()
        return [t.tolist() for t in gathered]

    def _peer_failure_now(self) -> str | None:
        try:
            deadline = time.monotonic() + 2  # a failing rank posts its error just before it exits
            while time.monotonic() < deadline:
                if self._store.check([self._key("failed")]):
                    return self._store.get(self._key("failed")).decode("utf-8", "replace")
                time.sleep(0.1)
        except Exception:  # noqa: BLE001
            return None
        return None

    def add_progress(self, count: int) -> None:
        self._store.add(self._key("progress"), count)

    def progress(self) -> int:
        return int(self._store.add(self._key("progress"), 0))


def _join(world: World, timeout: float) -> tuple[Any, Any]:
    """The default process group's store, and a gloo group for the collective (the default one if it is gloo)."""
    try:
        import torch.distributed as dist  # noqa: PLC0415
    except ImportError as err:  # pragma: no cover - torch is a dependency
        raise RlaifError("Running under a launcher needs torch.distributed.") from err
    if not dist.is_available():
        raise RlaifError("This torch build has no torch.distributed: run one process, or install a torch with it.")
    if not dist.is_initialized():
        try:
            dist.init_process_group("gloo", init_method="env://", rank=world.rank, world_size=world.size,
                                    timeout=timedelta(seconds=timeout))
        except (RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RlaifError(f"Rank {world.rank} of {world.size} cannot join the job at MASTER_ADDR:MASTER_PORT "
                             f"({first}): launch with accelerate launch or torchrun, which set them.") from err
    group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout))
    return dist.distributed_c10d._get_default_store(), group
