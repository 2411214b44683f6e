"""End to end: `rlaif label --model http://127.0.0.1:PORT/v1` in a subprocess against a real llama-server that is
killed mid-run: the run stops with the one-line error, keeps the finished labels, and `--resume` (after the server
is back on the same port) completes with exactly one record per pair."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llama_server import LlamaServer, llama_binary, llama_gguf  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow

# the first 300 pairs of the hh-rlhf harmless-base dev split (MIT), shipped with the examples
HH = Path(__file__).resolve().parents[1] / "examples" / "data" / "hh_rlhf_harmless.jsonl"


def write_pairs(path: Path, n: int) -> list[str]:
    rows = [json.loads(line) for line in HH.read_text(encoding="utf-8").splitlines()[:n]]
    pairs = [{"id": r["id"], "prompt": r["prompt"], "response_a": r["chosen"], "response_b": r["rejected"]}
             for r in rows]
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    return [p["id"] for p in pairs]


def label_command(url: str, pairs: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rlaif", "label", "--model", url, "--input", str(pairs), "--out", str(out),
            "--principles", "k", "--k", "2", "--chunk-pairs", "1", "--no-cache",
            "--backend-option", "retries=1", "--backend-option", "backoff=0.05",
            "--backend-option", "tokenizer=server", *extra]


def lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_killed_server_mid_label_then_resume(llama_binary, llama_gguf, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    ids = write_pairs(pairs, 6)
    out = tmp_path / "labels.jsonl"
    server = LlamaServer(llama_binary, llama_gguf, tmp_path / "server.log", ctx=4096).start()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = subprocess.Popen(label_command(server.url, pairs, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while len(lines(out)) < 2 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert run.poll() is None, f"the label run ended before the kill: {run.communicate()}"
        server.kill()
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
        server.stop()
    assert run.returncode == 1
    error = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, stderr
    assert f"server at http://127.0.0.1:{server.port} stopped answering after 2 tries" in error[0]
    assert error[0].endswith("restart it and rerun with --resume.")
    kept = lines(out)
    assert 2 <= len(kept) < len(ids) and [r["id"] for r in kept] == ids[:len(kept)]

    server.start()  # the same port: the same --model
    try:
        done = subprocess.run(label_command(server.url, pairs, out, "--resume"), capture_output=True, text=True,
                              env=env, timeout=600)
    finally:
        server.stop()
    assert done.returncode == 0, done.stderr
    rows = lines(out)
    assert sorted(r["id"] for r in rows) == sorted(ids) and len(rows) == len(ids)
    assert rows[:len(kept)] == kept  # the finished labels were kept as they were
    assert all(0.0 < r["p_a"] < 1.0 and r["meta"]["model"].startswith("server:gemma-3-270m-q4_k_m@") for r in rows)
