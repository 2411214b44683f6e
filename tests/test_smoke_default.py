"""End to end on the real embedded default model (Gemma 3 270M), through the CLI, on two example pairs.

The GGUF is converted once into $RLAIF_CACHE_DIR (a temporary dir in tests, so about a
minute); set RLAIF_TEST_MODEL_CACHE to a directory to keep the conversion between runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlaif.cli import cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "pairs.jsonl"


@pytest.mark.slow
def test_default_model_labels_two_example_pairs(tmp_path, monkeypatch):
    if os.environ.get("RLAIF_TEST_MODEL_CACHE"):
        monkeypatch.setenv("RLAIF_CACHE_DIR", os.environ["RLAIF_TEST_MODEL_CACHE"])
    out = tmp_path / "labels.jsonl"
    result = CliRunner().invoke(cli, ["label", "--input", str(EXAMPLES), "--out", str(out), "--limit", "2",
                                      "--principles", "k", "--k", "2", "--cache-dir", str(tmp_path / "results")])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected_ids = [json.loads(line)["id"] for line in EXAMPLES.read_text().splitlines()[:2]]
    assert [row["id"] for row in rows] == expected_ids
    for row in rows:
        assert 0 < row["p_a"] < 1 and len(row["by_principle"]) == 2
        assert row["option_mass"] > 0.3, "the CAI template should put most of Gemma's mass on A/B"
        assert row["p_a"] == pytest.approx((row["p_a_ab"] + row["p_a_ba"]) / 2, abs=1e-12)
    meta = json.loads((tmp_path / "labels.jsonl.meta.json").read_text())
    assert meta["status"] == "done" and meta["pairs"] == 2
    assert meta["model"].startswith("gemma-3-270m-q4_k_m@") and meta["constitution"] == "cai-harmless"
