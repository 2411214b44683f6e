"""Several processes, one output: `accelerate launch` (gloo on CPU) and hand-set ranks, real subprocesses.

The launched run must write the file one process writes, byte for byte; a rank
killed with SIGKILL must stop the job (the launcher's propagation, or our
heartbeat without a launcher), and --resume with the same or another number of
processes must finish with one record per pair.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlaif.cli import cli
from rlaif.distributed import World, shard_of
from rlaif.errors import RlaifError

ROOT = Path(__file__).resolve().parents[1]
WORDS = "hello bye yes no good bad ok what two plus four kind honest".split()
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "ACCELERATE_USE_CPU", "RLAIF_DISTRIBUTED")


def make_pairs(path: Path, n: int) -> str:
    pairs = [{"id": f"k{i:03d}", "prompt": f"Human: what is two plus {i % 10}?",
              "response_a": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(30)),
              "response_b": " ".join(WORDS[(3 * i + j) % len(WORDS)] for j in range(15))} for i in range(n)]
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return str(path)


def label_args(pairs: str, out: Path, model: str, *extra: str) -> list[str]:
    return ["label", "--input", pairs, "--out", str(out), "--model", model, "--principles", "k", "--k", "2",
            "--chunk-pairs", "1", *extra]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    return {**env, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RLAIF_THREADS": "1", **extra}


def accelerate(n: int, args: list[str], cwd: Path) -> subprocess.Popen:
    """`accelerate launch --multi_gpu --num_processes n -m rlaif ARGS` (on a CPU machine: torchrun, gloo)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "rlaif", *args]
    return subprocess.Popen(command, cwd=cwd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def ranks_by_hand(n: int, args: list[str], cwd: Path, **extra: str) -> list[subprocess.Popen]:
    """n processes with the launcher's variables set by hand: nothing stops the others when one dies."""
    port = str(free_port())
    return [subprocess.Popen([sys.executable, "-m", "rlaif", *args], cwd=cwd, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT,
                             env=child_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE=str(n), RANK=str(r),
                                           LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(n), **extra))
            for r in range(n)]


def output_of(proc: subprocess.Popen, timeout: float = 120) -> str:
    try:
        return proc.communicate(timeout=timeout)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def kill_rank_midway(out: Path, rank: int, size: int, procs: list[subprocess.Popen], lines: int = 5) -> float:
    """SIGKILL `rank` once its shard holds `lines` labels (its pid is in its shard's lock file); the kill's time."""
    shard = out.with_name(out.name + ".shards") / f"rank-{rank}-of-{size}.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if shard.exists() and shard.read_bytes().count(b"\n") >= lines:
            os.kill(int(Path(f"{shard}.lock").read_text().split()[2]), signal.SIGKILL)
            return time.time()
        time.sleep(0.005)
    pytest.fail(f"rank {rank} never wrote {lines} labels: " + "".join(output_of(p, 5)[-800:] for p in procs))


def assert_one_label_each(out: Path, reference: dict[str, float]) -> None:
    found = rows(out)
    assert [r["id"] for r in found] == sorted(reference)  # input order, each pair once
    assert Counter(r["id"] for r in found).most_common(1)[0][1] == 1
    assert {r["id"]: r["p_a"] for r in found} == pytest.approx(reference, abs=1e-6)
    meta = json.loads(out.with_name(out.name + ".meta.json").read_text())
    assert meta["status"] == "done" and meta["pairs"] == len(reference)
    assert not out.with_name(out.name + ".shards").exists()


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory) -> dict[str, float]:
    """p_a of 120 pairs from one process, no cache."""
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "labels.jsonl"
    result = CliRunner().invoke(cli, label_args(make_pairs(tmp / "pairs.jsonl", 120), out, tiny_model_dir,
                                                "--no-cache"))
    assert result.exit_code == 0, result.output
    return {row["id"]: row["p_a"] for row in rows(out)}


# -- ranks and the split -------------------------------------------------------------------------------------------


def test_world_comes_from_the_launchers_variables():
    assert World.from_env({}) == World(0, 1, 0, 1)
    torchrun = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert World.from_env(torchrun) == World(3, 4, 1, 2)
    openmpi = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
               "OMPI_COMM_WORLD_LOCAL_SIZE": "2"}
    assert World.from_env(openmpi) == World(1, 2, 1, 2)
    assert World.from_env({**torchrun, "RLAIF_DISTRIBUTED": "0"}) == World()
    with pytest.raises(RlaifError, match="RANK 5, WORLD_SIZE 4"):
        World.from_env({**torchrun, "RANK": "5"})
    with pytest.raises(RlaifError, match="WORLD_SIZE='two' is not a whole number"):
        World.from_env({"WORLD_SIZE": "two"})


@pytest.mark.parametrize("flags", [["--cpu"], []])
def test_accelerate_on_cpus_starting_one_of_several_processes_is_refused(tiny_model_dir, tmp_path, flags):
    """Without GPUs `accelerate launch [--cpu] --num_processes 2` runs ONE process (MASTER_ADDR, no ranks)."""
    accelerate_env = {"ACCELERATE_USE_CPU": str(bool(flags)), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    with pytest.raises(RlaifError, match="accelerate launch started one process.*--multi_gpu --num_processes N"):
        World.from_env(accelerate_env)
    assert World.from_env({"ACCELERATE_USE_CPU": "True"}) == World()  # one process asked for: fine
    if flags:  # the real launcher, once
        pairs = make_pairs(tmp_path / "pairs.jsonl", 4)
        proc = subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", *flags, "--num_processes", "2",
                                 "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                                 "--main_process_port", str(free_port()), "-m", "rlaif",
                                 *label_args(pairs, tmp_path / "o.jsonl", tiny_model_dir)],
                                cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        text = output_of(proc)
        assert proc.returncode != 0 and "Error: accelerate launch started one process" in text, text[-1500:]
        assert not (tmp_path / "o.jsonl").exists()


def test_shard_of_depends_on_the_id_alone():
    keys = [f"id-{i}" for i in range(4000)]
    split = [shard_of(k, 4) for k in keys]
    assert split == [shard_of(k, 4) for k in keys] and [shard_of(k, 4) for k in reversed(keys)] == split[::-1]
    assert all(800 < split.count(r) < 1200 for r in range(4))  # about a quarter each
    assert {shard_of(k, 1) for k in keys} == {0}


# -- failures without a launcher: our own stop ---------------------------------------------------------------------


def test_a_rank_that_fails_stops_the_other_with_its_error(tiny_model_dir, tmp_path):
    pairs = make_pairs(tmp_path / "pairs.jsonl", 40)
    out = tmp_path / "labels.jsonl"
    (tmp_path / "labels.jsonl.shards" / "rank-1-of-2.jsonl").mkdir(parents=True)  # rank 1 cannot write its shard
    procs = ranks_by_hand(2, label_args(pairs, out, tiny_model_dir, "--no-cache"), tmp_path)
    started = time.time()
    first, second = (output_of(p) for p in procs)
    assert [p.returncode for p in procs] == [1, 1] and time.time() - started < 90
    assert "Error: rank 1 failed: Cannot write" in first and "it is a directory" in first, first
    assert "Traceback" not in first + second


def test_a_killed_rank_stops_the_other_and_resume_finishes(tiny_model_dir, reference, tmp_path):
    pairs = make_pairs(tmp_path / "pairs.jsonl", 120)
    out = tmp_path / "labels.jsonl"
    args = label_args(pairs, out, tiny_model_dir, "--cache-dir", str(tmp_path / "cache"))
    procs = ranks_by_hand(2, args, tmp_path, RLAIF_DIST_TIMEOUT="3")
    killed = kill_rank_midway(out, 1, 2, procs)
    text = output_of(procs[0])
    assert procs[0].returncode == 1 and time.time() - killed < 60
    assert "rank 1 stopped responding (no heartbeat for 3 s" in text and "--resume" in text, text[-600:]
    result = CliRunner().invoke(cli, [*args, "--resume"])  # one process finishes what the two left
    assert result.exit_code == 0, result.output
    assert_one_label_each(out, reference)


# -- accelerate launch ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_accelerate_two_processes_write_what_one_writes(tiny_model_dir, tmp_path):
    pairs = make_pairs(tmp_path / "pairs.jsonl", 40)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    result = CliRunner().invoke(cli, label_args(pairs, one, tiny_model_dir, "--no-cache"))
    assert result.exit_code == 0, result.output
    proc = accelerate(2, label_args(pairs, two, tiny_model_dir, "--no-cache"), tmp_path)
    text = output_of(proc, 300)
    assert proc.returncode == 0, text[-2000:]
    assert two.read_bytes() == one.read_bytes()  # same records, same order, same numbers
    meta = json.loads((tmp_path / "two.jsonl.meta.json").read_text())
    assert meta["world_size"] == 2 and meta["status"] == "done" and meta["pairs"] == 40
    assert meta["labelled_this_run"] == 40 and not (tmp_path / "two.jsonl.shards").exists()
    assert text.count(f"Wrote {two}") == 1  # rank 0 reports for both


@pytest.mark.slow
def test_accelerate_rank_killed_then_resume_with_two_or_one_process(tiny_model_dir, reference, tmp_path):
    pairs = make_pairs(tmp_path / "pairs.jsonl", 120)
    out = tmp_path / "labels.jsonl"
    args = label_args(pairs, out, tiny_model_dir, "--cache-dir", str(tmp_path / "cache"))
    proc = accelerate(2, args, tmp_path)
    killed = kill_rank_midway(out, 1, 2, [proc])
    text = output_of(proc, 120)
    assert proc.returncode != 0 and time.time() - killed < 60, text[-1500:]  # the launcher stopped rank 0
    shard_meta = tmp_path / "labels.jsonl.shards" / "rank-1-of-2.jsonl.meta.json"
    assert json.loads(shard_meta.read_text())["status"] == "running"  # killed: never marked done
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in tmp_path.glob("labels.jsonl*"):
        (shutil.copytree if path.is_dir() else shutil.copy2)(path, copy / path.name)

    again = accelerate(2, [*args, "--resume"], tmp_path)  # the same N
    text = output_of(again, 300)
    assert again.returncode == 0, text[-2000:]
    assert_one_label_each(out, reference)
    other = [*args[:4], str(copy / "labels.jsonl"), *args[5:], "--resume"]  # another N: one process
    result = CliRunner().invoke(cli, other)
    assert result.exit_code == 0, result.output
    assert_one_label_each(copy / "labels.jsonl", reference)
