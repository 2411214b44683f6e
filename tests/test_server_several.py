"""Several servers, for real: `rlaif label --model URL1 --backend-option urls=URL2` in a subprocess against two
llama-servers on the same GGUF. One of them is SIGKILLed while it is answering: the run warns once, moves that
server's work to the other and finishes with one record per pair, in input order, equal within llama.cpp's own
noise to the labels of one server alone. (That one pair's requests stay on one server is shown on fake servers,
whose request logs can be read: tests/test_server_client.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from llama_server import LlamaServer, llama_binary, llama_gguf  # noqa: F401 (fixtures)
from test_server_label_cli import label_command, lines, write_pairs

pytestmark = pytest.mark.slow

SERVER_NOISE_Q = 0.15  # |p_a| of the same pair from two llama-server processes in different batch shapes


def test_a_killed_server_hands_its_work_to_the_other(llama_binary, llama_gguf, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    ids = write_pairs(pairs, 12)
    out, alone = tmp_path / "labels.jsonl", tmp_path / "alone.jsonl"
    servers = [LlamaServer(llama_binary, llama_gguf, tmp_path / f"server{i}.log", ctx=4096, threads=1,
                           extra=("--metrics",)).start() for i in range(2)]
    keep, doomed = servers
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = label_command(keep.url, pairs, out, "--backend-option", f"urls={doomed.url}")
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 300
        # kill it while it is answering, after the run has written something
        while run.poll() is None and time.monotonic() < deadline:
            if lines(out) and doomed.metric("requests_processing") > 0:
                break
            time.sleep(0.02)
        assert run.poll() is None, f"the run ended before the second server was seen working: {run.communicate()}"
        served_before = [s.metric("prompt_tokens_total") for s in servers]
        doomed.kill()
        _, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr
        served_after = keep.metric("prompt_tokens_total")
        subprocess.run(label_command(keep.url, pairs, alone), capture_output=True, text=True, env=env, timeout=600,
                       check=True)
    finally:
        if run.poll() is None:
            run.kill()
        for server in servers:
            server.stop()
    assert all(tokens > 0 for tokens in served_before)  # both servers had work
    assert served_after > served_before[0]  # the survivor went on
    warnings = [line for line in stderr.splitlines() if "stopped answering" in line]
    assert len(warnings) == 1 and f"127.0.0.1:{doomed.port}" in warnings[0], stderr
    assert "move to the other 1 server" in warnings[0]
    assert not any(line.startswith("Error:") for line in stderr.splitlines())
    rows, reference = lines(out), lines(alone)
    assert [r["id"] for r in rows] == ids == [r["id"] for r in reference]
    for row, ref in zip(rows, reference):
        assert row["p_a"] == pytest.approx(ref["p_a"], abs=SERVER_NOISE_Q)
        assert json.dumps(row["meta"]["model"]) == json.dumps(ref["meta"]["model"])  # one model identity
