"""A labelling run killed with SIGKILL and resumed ends with exactly the labels of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlaif.cli import cli

ROOT = Path(__file__).resolve().parents[1]
WORDS = "hello bye yes no good bad ok what two plus four kind honest".split()
N = 40


def make_pairs(path: Path) -> str:
    pairs = [{"id": f"k{i:02d}", "prompt": f"Human: what is two plus {i % 10}?",
              "response_a": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(30)),
              "response_b": " ".join(WORDS[(3 * i + j) % len(WORDS)] for j in range(15))} for i in range(N)]
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return str(path)


def label_args(pairs: str, out: Path, model: str, *extra: str) -> list[str]:
    return ["label", "--input", pairs, "--out", str(out), "--model", model, "--principles", "k", "--k", "4",
            "--chunk-pairs", "1", *extra]


def complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def labels(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory) -> dict[str, float]:
    """p_a of every pair from one uninterrupted run without a cache."""
    tmp = tmp_path_factory.mktemp("reference")
    out = tmp / "labels.jsonl"
    result = CliRunner().invoke(cli, label_args(make_pairs(tmp / "pairs.jsonl"), out, tiny_model_dir, "--no-cache"))
    assert result.exit_code == 0, result.output
    return {row["id"]: row["p_a"] for row in labels(out)}


def test_sigkill_then_resume(tiny_model_dir, reference, tmp_path):
    pairs = make_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "labels.jsonl"
    args = label_args(pairs, out, tiny_model_dir, "--cache-dir", str(tmp_path / "cache"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "RLAIF_THREADS": "1"}
    log = (tmp_path / "stderr.txt").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "rlaif", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 120
    try:
        while proc.poll() is None and complete_lines(out) < 3 and time.time() < deadline:
            time.sleep(0.005)
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before it could be killed: "
                        f"{(tmp_path / 'stderr.txt').read_text()[-500:]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    killed_at = complete_lines(out)
    assert 3 <= killed_at < N, f"killed after {killed_at} pairs"
    assert json.loads((tmp_path / "labels.jsonl.meta.json").read_text())["status"] == "running"

    result = CliRunner().invoke(cli, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    rows = labels(out)
    counts = Counter(row["id"] for row in rows)
    assert set(counts) == set(reference) and set(counts.values()) == {1}  # every pair once, none twice
    assert {row["id"]: row["p_a"] for row in rows} == pytest.approx(reference, abs=1e-6)
    meta = json.loads((tmp_path / "labels.jsonl.meta.json").read_text())
    assert meta["status"] == "done" and meta["pairs"] == N and meta["labelled_this_run"] == N - killed_at


def test_torn_last_line_is_repaired_on_resume(tiny_model_dir, reference, tmp_path):
    pairs = make_pairs(tmp_path / "pairs.jsonl")
    out = tmp_path / "labels.jsonl"
    args = label_args(pairs, out, tiny_model_dir, "--no-cache")
    assert CliRunner().invoke(cli, [*args, "--limit", "5"]).exit_code == 0
    first_five = out.read_text()
    torn = json.dumps(labels(out)[0])  # pretend the sixth record was cut off mid-write
    with out.open("a") as handle:
        handle.write(torn[: len(torn) // 2].replace('"k00"', '"k05"'))
    result = CliRunner().invoke(cli, [*args, "--resume"])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith(first_five)
    rows = labels(out)  # every line parses: the torn half is gone
    assert [row["id"] for row in rows] == sorted(reference)
    assert {row["id"]: row["p_a"] for row in rows} == pytest.approx(reference, abs=1e-6)
