"""`rlaif align` end to end: hand-written labels, a fake and a tiny real labeller, reports, plots, --compare."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

import rlaif.label
from rlaif.align.report import compare_reports, format_table, render_markdown
from rlaif.cli import cli

HUMANS = [
    {"id": "h1", "prompt": "p1", "chosen": "a long good answer", "rejected": "short"},
    {"id": "h2", "prompt": "p2", "chosen": "yes", "rejected": "no, never"},
    {"id": "h3", "prompt": "p3", "chosen": "abcd", "rejected": "wxyz"},
    {"id": "h4", "prompt": "p4", "chosen": "ok", "rejected": "a much longer bad answer"},
    {"id": "h5", "prompt": "p5", "chosen": "same", "rejected": "same"},  # skipped: identical
    {"id": "h6", "prompt": "p6", "chosen": "unlabelled", "rejected": "pair"},  # skipped: no label
]


def label(pid, prompt, a, b, p_a, p_ab, p_ba, by, mass):
    return {"id": pid, "prompt": prompt, "response_a": a, "response_b": b, "p_a": p_a, "p_a_ab": p_ab, "p_a_ba": p_ba,
            "by_principle": {k: v[0] for k, v in by.items()}, "by_principle_orders": {k: v[1] for k, v in by.items()},
            "option_mass": mass, "chosen": a if p_a >= 0.5 else b, "rejected": b if p_a >= 0.5 else a,
            "rationale": None, "meta": {"model": "hand-written", "template": "cai-choice"}}


LABELS = [  # human slot: h1 a, h2 b, h3 a, h4 b
    label("h1", "p1", "a long good answer", "short", 0.8, 0.9, 0.7,
          {"harm": (0.8, [0.9, 0.7]), "help": (0.4, [0.3, 0.5])}, 0.9),
    label("h2", "p2", "no, never", "yes", 0.3, 0.2, 0.4, {"harm": (0.3, [0.2, 0.4]), "help": (0.2, [0.1, 0.3])}, 0.8),
    label("h3", "p3", "abcd", "wxyz", 0.5, 0.6, 0.4, {"harm": (0.5, [0.6, 0.4])}, 0.7),
    label("h4", "p4", "a much longer bad answer", "ok", 0.9, 0.95, 0.85, {"harm": (0.9, [0.95, 0.85])}, 0.6),
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def run(args):
    result = CliRunner().invoke(cli, ["align", *args])
    return result


@pytest.fixture
def files(tmp_path):
    return write_jsonl(tmp_path / "human.jsonl", HUMANS), write_jsonl(tmp_path / "labels.jsonl", LABELS)


def test_align_with_labels_file_hand_computed(files, tmp_path):
    human, labels = files
    out = tmp_path / "rep"
    result = run(["--human", human, "--labels", labels, "--out", str(out), "--n-boot", "500", "--no-plots"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["n_input"] == 6 and report["n_scored"] == 4
    assert report["skipped"] == {"chosen and rejected identical": 1, "no label for the pair": 1}
    approx = pytest.approx
    assert report["alignment"]["value"] == approx(2.5 / 4)  # 1, 1, tie, 0
    assert report["alignment_by_order"]["ab"]["value"] == approx(0.75)  # p_h .9 .8 .6 .05
    assert report["alignment_by_order"]["ba"]["value"] == approx(0.5)  # p_h .7 .6 .4 .15
    pos = report["position_bias"]
    assert pos["same_slot"]["value"] == approx(0.25) and pos["favoured"] == "first"  # h3: slot 1 twice
    assert pos["p_first"] == approx(5 / 8)
    assert report["by_principle"]["harm"]["value"] == approx(0.625)
    assert report["by_principle"]["help"]["value"] == approx(0.5) and report["by_principle"]["help"]["n"] == 2
    assert report["calibration"]["brier"] == approx((0.04 + 0.09 + 0.25 + 0.81) / 4)
    assert report["calibration"]["ece"] == approx((0.2 + 0.3 + 0.5 + 0.9) / 4)
    lb = report["length_bias"]
    assert lb["ai_picks_longer"]["value"] == approx(2 / 3) and lb["human_picks_longer"]["value"] == approx(1 / 3)
    assert report["baselines"]["always_longer"]["value"] == approx(0.375)
    assert report["baselines"]["always_shorter"]["value"] == approx(0.625)
    assert report["option_mass"] == {"mean": approx(0.75), "median": approx(0.75), "min": 0.6, "n": 4}
    assert report["source"]["model"] == "hand-written"
    assert "labeller alignment" in result.output and "62.5%" in result.output and "baseline: always longer" in result.output
    md = (out / "report.md").read_text()
    assert "**62.5%** of 4 pairs" in md and "| harm |" in md and "1 chosen and rejected identical" in md
    assert not list(out.glob("*.png"))


def test_align_plots(files, tmp_path):
    human, labels = files
    out = tmp_path / "rep"
    result = run(["--human", human, "--labels", labels, "--out", str(out), "--n-boot", "50", "--plots"])
    assert result.exit_code == 0, result.output
    for name in ("reliability.png", "principles.png", "position_bias.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![reliability](reliability.png)" in (out / "report.md").read_text()


def test_align_without_matplotlib(files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    human, labels = files
    result = run(["--human", human, "--labels", labels, "--out", str(tmp_path / "a"), "--plots"])
    assert result.exit_code == 1
    assert "Error: Plots need matplotlib: pip install 'rlaif[plot]' (or pass --no-plots)." in result.output
    assert not (tmp_path / "a").exists()
    result = run(["--human", human, "--labels", labels, "--out", str(tmp_path / "b"), "--n-boot", "50"])
    assert result.exit_code == 0 and "No plots: matplotlib is not installed (pip install 'rlaif[plot]')" in result.output
    assert (tmp_path / "b" / "report.json").exists() and not list((tmp_path / "b").glob("*.png"))


def test_align_labels_with_fake_labeller(tmp_path, monkeypatch):
    """The labelling path: pairs built with the chosen first in half, passed to label_pairs, scored."""
    humans = [{"prompt": f"q{i}", "chosen": "x" * (i + 1), "rejected": "y" * (8 - i)} for i in range(8)]
    calls = {}

    def fake_label_pairs(pairs, config, out, overwrite=False, **_):  # prefers the longer response
        calls.update(pairs=pairs, config=config, out=out, overwrite=overwrite)
        return [{**p, "p_a": p_a, "p_a_ab": p_a, "p_a_ba": p_a, "by_principle": {}, "option_mass": 0.5,
                 "meta": {"model": config.model}}
                for p in pairs for p_a in [0.8 if len(p["response_a"]) > len(p["response_b"]) else 0.2]]

    monkeypatch.setattr(rlaif.label, "label_pairs", fake_label_pairs)
    out = tmp_path / "rep"
    result = run(["--human", write_jsonl(tmp_path / "h.jsonl", humans), "--out", str(out), "--model", "tiny",
                  "--principles", "one", "--seed", "3", "--n-boot", "50", "--no-plots", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert calls["config"].model == "tiny" and calls["config"].principles == "one" and calls["config"].seed == 3
    assert calls["out"] == out / "labels.jsonl" and calls["overwrite"] is True
    assert all(set(p) == {"id", "prompt", "response_a", "response_b"} for p in calls["pairs"])
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert sum(p["human"] == "a" for p in pairs) == 4  # chosen shown first in exactly half
    report = json.loads((out / "report.json").read_text())
    # chosen is longer for i >= 4: a labeller that prefers length agrees on exactly those four
    assert report["alignment"]["value"] == 0.5 == report["baselines"]["always_longer"]["value"]
    assert report["length_bias"]["ai_picks_longer"]["value"] == 1.0
    assert report["position_bias"]["same_slot"]["value"] == 0.0
    assert report["share_human_a"] == 0.5 and report["source"]["model"] == "tiny"


WORDS = ["A", "B", "(", ")", "Human", "Assistant", ":", "The", "answer", "is", "hello", "bye", "yes", "no"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1)
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_align_with_a_tiny_real_model(tiny_model, tmp_path):
    humans = [{"id": f"t{i}", "prompt": "hello", "chosen": "yes " * (i + 1), "rejected": "no bye"} for i in range(4)]
    out = tmp_path / "rep"
    args = ["--human", write_jsonl(tmp_path / "h.jsonl", humans), "--out", str(out), "--model", tiny_model,
            "--principles", "k", "--k", "2", "--cache-dir", str(tmp_path / "cache"), "--n-boot", "50", "--no-plots"]
    result = run(args)
    assert result.exit_code == 0, result.output
    labels = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    slots = {json.loads(line)["id"]: json.loads(line)["human"] for line in (out / "pairs.jsonl").read_text().splitlines()}
    assert len(labels) == 4 and sorted(slots.values()) == ["a", "a", "b", "b"]
    expected = sum(1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0
                   for p in (r["p_a"] if slots[r["id"]] == "a" else 1 - r["p_a"] for r in labels)) / 4
    report = json.loads((out / "report.json").read_text())
    assert report["alignment"]["value"] == pytest.approx(expected)
    assert all(len(e["by_principle"]) == 2 for e in labels) and len(report["by_principle"]) >= 2
    assert 0 < report["option_mass"]["mean"] <= 1
    refused = run(args)  # like every command: an existing output needs --resume or --overwrite
    assert refused.exit_code == 1 and "exists: pass --resume to continue it or --overwrite" in refused.output
    rerun = run([*args, "--resume"])  # every pair is already labelled: the same report
    assert rerun.exit_code == 0 and json.loads((out / "report.json").read_text()) == report


def test_compare(files, tmp_path):
    human, labels = files
    flipped = [{**row, "p_a": 1 - row["p_a"], "meta": {"model": "flipped"}} for row in LABELS]
    other = write_jsonl(tmp_path / "flipped.jsonl", flipped)
    for name, path in (("one", labels), ("two", other)):
        assert run(["--human", human, "--labels", path, "--out", str(tmp_path / name), "--n-boot", "50",
                    "--no-plots"]).exit_code == 0
    result = run(["--compare", str(tmp_path / "one"), str(tmp_path / "two"), "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    lines = {line.split("  ")[0]: line for line in result.output.splitlines()}
    assert "hand-written" in lines["labeller"] and "flipped" in lines["labeller"]
    assert "62.5%" in lines["alignment"] and "37.5%" in lines["alignment"]  # 1 - (1, 1, .5, 0) averages .375
    assert "principle: help" in result.output
    assert "| alignment | 62.5%" in (tmp_path / "cmp" / "compare.md").read_text()
    text, _ = compare_reports([tmp_path / "one"])
    assert "62.5%" in text
    bad = run(["--compare", str(tmp_path / "nowhere")])
    assert bad.exit_code == 1 and "report.json does not exist" in bad.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Give the human preferences: rlaif align --human FILE"),
        (["--compare"], "--compare needs report directories"),
        (["stray"], "Unexpected argument(s) stray: directories are for --compare"),
    ],
)
def test_usage_errors(args, message):
    result = run(args)
    assert result.exit_code == 1 and message in result.output


def test_bad_human_input(tmp_path, files):
    _, labels = files
    wrong = write_jsonl(tmp_path / "w.jsonl", [{"prompt": "p", "good": "a", "bad": "b"}])
    result = run(["--human", wrong, "--labels", labels])
    assert result.exit_code == 1 and "lacks column(s) chosen, rejected" in result.output
    assert len(result.output.strip().splitlines()) == 1
    mapped = run(["--human", wrong, "--labels", labels, "--column-map", "chosen=good", "--column-map", "rejected=bad",
                  "--out", str(tmp_path / "m")])
    assert mapped.exit_code == 1 and "No pair could be scored (1 no label for the pair)" in mapped.output
    empty = write_jsonl(tmp_path / "e.jsonl", [{"prompt": "p", "chosen": "", "rejected": "b"}])
    result = run(["--human", empty, "--labels", labels])
    assert result.exit_code == 1 and "no usable pair is left (1 empty chosen)" in result.output


def test_config_file(files, tmp_path):
    human, labels = files
    config = tmp_path / "align.yaml"
    config.write_text(f"human: {human}\nlabels: {labels}\nn-bins: 2\nn_boot: 50\nplots: false\nout: {tmp_path / 'c'}\n")
    result = run(["--config", str(config)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert report["settings"]["n_bins"] == 2 and len(report["calibration"]["bins"]) == 2


def test_table_and_markdown_render_warnings(files, tmp_path):
    human, labels = files
    run(["--human", human, "--labels", labels, "--out", str(tmp_path / "r"), "--n-boot", "50", "--no-plots"])
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    table = format_table(report)
    assert "warning: Only 4 pairs were scored" in table and "principle: harm" in table
    assert "## Warnings" in render_markdown(report) and "## Calibration" in render_markdown(report)
