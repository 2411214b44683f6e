"""SCoRe on the real embedded default model (Gemma 3 270M): both stages with LoRA, then the two-attempt evaluation.

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
from rlaif.io import read_jsonl

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"  # GSM8K samples (MIT)


@pytest.mark.slow
def test_default_model_trains_both_stages_and_is_evaluated(tmp_path, monkeypatch):
    if os.environ.get("RLAIF_TEST_MODEL_CACHE"):
        monkeypatch.setenv("RLAIF_CACHE_DIR", os.environ["RLAIF_TEST_MODEL_CACHE"])
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    out = tmp_path / "score"
    train = CliRunner().invoke(cli, [
        "train-self-correct", "--problems", str(EXAMPLES / "gsm8k_train.jsonl"), "--limit", "4", "--policy", "default",
        "--output-dir", str(out), "--stage1-steps", "1", "--stage2-steps", "1", "--prompts-per-step", "1",
        "--num-generations", "2", "--completion-length", "24", "--lora-r", "4", "--learning-rate", "1e-4"])
    assert train.exit_code == 0, train.output
    rows = list(read_jsonl(out / "score_log.jsonl"))
    assert [(r["step"], r["stage"]) for r in rows] == [(1, 1), (2, 2)]
    assert all(r["reward_attempt1"] in (0.0, 0.5, 1.0) and r["reward_attempt2"] in (0.0, 0.5, 1.0) for r in rows)
    evaluated = CliRunner().invoke(cli, ["self-correct", "--model", str(out / "policy"), "--problems",
                                         str(EXAMPLES / "gsm8k_test.jsonl"), "--limit", "2", "--out", str(tmp_path / "eval"),
                                         "--max-new-tokens", "24", "--n-boot", "100"])
    assert evaluated.exit_code == 0, evaluated.output
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["n"] == 2
    assert report["delta"] == pytest.approx(report["delta_i_to_c"] - report["delta_c_to_i"])
