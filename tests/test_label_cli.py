"""`rlaif label` through click's CliRunner, on a tiny real model saved to a temporary directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlaif.cli import cli
from rlaif.records import content_id

PAIRS = [
    {"id": "p1", "prompt": "Human: hello\n\nAssistant:", "response_a": "good", "response_b": "bad"},
    {"id": "p2", "prompt": "Human: what is two plus two?\n\nAssistant:", "response_a": "four", "response_b": "two"},
    {"id": "p3", "prompt": "Human: bye", "response_a": "bye", "response_b": "no ok"},
]
HUMAN = [
    {"prompt": "\n\nHuman: what is two plus two?\n\nAssistant:", "chosen": " four", "rejected": " two"},
    {"prompt": "\n\nHuman: hello\n\nAssistant:", "chosen": " hello", "rejected": " bye"},
]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def run(*args: str):
    return CliRunner().invoke(cli, ["label", *args])


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # handled, not a crash
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], result.output


@pytest.fixture
def pairs_file(tmp_path) -> str:
    return write_jsonl(tmp_path / "pairs.jsonl", PAIRS)


def test_label_happy_path_on_a_tiny_model(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "labels.jsonl"
    args = ["--input", pairs_file, "--out", str(out), "--model", tiny_model_dir, "--principles", "k", "--k", "2",
            "--cache-dir", str(tmp_path / "cache")]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "Labelled 3 pairs" in result.output and f"Wrote {out}" in result.output
    rows = lines(out)
    assert [r["id"] for r in rows] == ["p1", "p2", "p3"]
    for row in rows:
        assert 0 < row["p_a"] < 1 and 0 < row["option_mass"] < 1 and len(row["by_principle"]) == 2
        assert row["p_a"] == pytest.approx(sum(row["by_principle"].values()) / 2, abs=1e-12)
        assert row["p_a"] == pytest.approx((row["p_a_ab"] + row["p_a_ba"]) / 2, abs=1e-12)
        assert row["chosen"] == (row["response_a"] if row["p_a"] >= 0.5 else row["response_b"])
    meta = json.loads((tmp_path / "labels.jsonl.meta.json").read_text())
    assert meta["status"] == "done" and meta["pairs"] == 3 and meta["config"]["k"] == 2
    assert meta["model"].startswith(Path(tiny_model_dir).name + "@")
    # Labels do not depend on how prompts are batched.
    other = tmp_path / "one-by-one.jsonl"
    result = run("--input", pairs_file, "--out", str(other), "--model", tiny_model_dir, "--principles", "k",
                 "--k", "2", "--no-cache", "--backend-option", "batch_tokens=1")
    assert result.exit_code == 0, result.output
    assert [r["p_a"] for r in lines(other)] == pytest.approx([r["p_a"] for r in rows], abs=1e-5)
    # --resume on a finished file: nothing redone, nothing duplicated.
    result = run(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert lines(out) == rows


def test_human_preference_format_with_column_map(tiny_model_dir, tmp_path):
    human = write_jsonl(tmp_path / "hh.jsonl", HUMAN)
    out = tmp_path / "labels.jsonl"
    result = run("--input", human, "--out", str(out), "--model", tiny_model_dir, "--principles", "one", "--no-cache",
                 "--column-map", "response_a=chosen", "--column-map", "response_b=rejected")
    assert result.exit_code == 0, result.output
    rows = lines(out)
    assert [(r["response_a"], r["response_b"]) for r in rows] == [(h["chosen"], h["rejected"]) for h in HUMAN]
    assert [r["id"] for r in rows] == [content_id(h["prompt"], h["chosen"], h["rejected"]) for h in HUMAN]
    assert all(len(r["by_principle"]) == 1 for r in rows)


def test_limit(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "labels.jsonl"
    result = run("--input", pairs_file, "--out", str(out), "--model", tiny_model_dir, "--only", "mlk-gandhi",
                 "--principles", "all", "--no-cache", "--limit", "2")
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in lines(out)] == ["p1", "p2"]
    assert all(list(r["by_principle"]) == ["mlk-gandhi"] for r in lines(out))


def test_config_file_with_a_flag_overriding_it(tiny_model_dir, pairs_file, tmp_path):
    config = tmp_path / "label.yaml"
    config.write_text(f"model: {tiny_model_dir}\nprinciples: k\nk: 3\nseed: 5\nno-cache: true\nchunk_pairs: 2\n")
    out = tmp_path / "labels.jsonl"
    result = run("--config", str(config), "--input", pairs_file, "--out", str(out), "--k", "2")
    assert result.exit_code == 0, result.output
    assert all(len(r["by_principle"]) == 2 for r in lines(out))
    cfg = json.loads((tmp_path / "labels.jsonl.meta.json").read_text())["config"]
    assert (cfg["k"], cfg["seed"], cfg["no_cache"], cfg["chunk_pairs"], cfg["model"]) == (2, 5, True, 2, tiny_model_dir)


def test_overwrite_replaces_the_output(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "labels.jsonl"
    base = ["--input", pairs_file, "--out", str(out), "--model", tiny_model_dir, "--no-cache", "--principles", "one"]
    assert run(*base).exit_code == 0
    result = run(*base[:-2], "--principles", "all", "--only", "mlk-gandhi", "--only", "most-hhh", "--overwrite")
    assert result.exit_code == 0, result.output
    assert len(lines(out)) == 3 and all(set(r["by_principle"]) == {"mlk-gandhi", "most-hhh"} for r in lines(out))


def test_cot_on_a_tiny_model(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "labels.jsonl"
    result = run("--input", pairs_file, "--out", str(out), "--model", tiny_model_dir, "--principles", "one",
                 "--cot", "--max-rationale-tokens", "4", "--clamp-low", "0.45", "--clamp-high", "0.55", "--no-cache")
    assert result.exit_code == 0, result.output
    for row in lines(out):
        assert 0.45 <= row["p_a"] <= 0.55
        [(pid, rationales)] = row["rationale"].items()
        assert list(row["by_principle"]) == [pid] and len(rationales) == 2
        assert all(isinstance(r, str) for r in rationales)
    assert json.loads((tmp_path / "labels.jsonl.meta.json").read_text())["template"] == "cai-choice-cot"


# ---- one-line errors ------------------------------------------------------------------------------------

def test_missing_input_file(tiny_model_dir, tmp_path):
    result = run("--input", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o.jsonl"), "--model", tiny_model_dir)
    assert_one_line_error(result, "nope.jsonl does not exist")


def test_missing_columns(tiny_model_dir, tmp_path):
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"prompt": h["prompt"], "good": h["chosen"], "bad": h["rejected"]}
                                               for h in HUMAN])
    result = run("--input", odd, "--out", str(tmp_path / "o.jsonl"), "--model", tiny_model_dir)
    assert_one_line_error(result, "lacks column(s) response_a, response_b", "it has: bad, good, prompt", "--column-map")


def test_empty_response(tiny_model_dir, tmp_path):
    bad = write_jsonl(tmp_path / "p.jsonl", [PAIRS[0], {**PAIRS[1], "response_b": "  "}])
    result = run("--input", bad, "--out", str(tmp_path / "o.jsonl"), "--model", tiny_model_dir)
    assert_one_line_error(result, "record 2", "'response_b' is empty")


@pytest.mark.parametrize(("flags", "fragments"), [
    (["--constitution", "cai-harmles"], ["Unknown constitution 'cai-harmles'", "Did you mean: cai-harmless"]),
    (["--only", "harmles-ethical"], ["Unknown principle 'harmles-ethical'", "Did you mean: harmless-ethical"]),
    (["--template", "cai-choise"], ["Unknown template 'cai-choise'", "Did you mean: cai-choice"]),
])
def test_unknown_names(tiny_model_dir, pairs_file, tmp_path, flags, fragments):
    out = tmp_path / "o.jsonl"
    result = run("--input", pairs_file, "--out", str(out), "--model", tiny_model_dir, *flags)
    assert_one_line_error(result, *fragments)
    assert not out.exists()


def test_malformed_yaml_constitution(tiny_model_dir, pairs_file, tmp_path):
    const = tmp_path / "mine.yaml"
    const.write_text("name: mine\nprinciples:\n  - id: a\n    text: [unclosed\n")
    result = run("--input", pairs_file, "--out", str(tmp_path / "o.jsonl"), "--model", tiny_model_dir,
                 "--constitution", str(const))
    assert_one_line_error(result, "mine.yaml is not valid YAML", "fix its syntax")


def test_constitution_with_an_unknown_key(tiny_model_dir, pairs_file, tmp_path):
    const = tmp_path / "mine.yaml"
    const.write_text("name: mine\nprinciples:\n  - id: a\n    txt: be kind\n")
    result = run("--input", pairs_file, "--out", str(tmp_path / "o.jsonl"), "--model", tiny_model_dir,
                 "--constitution", str(const))
    assert_one_line_error(result, "unknown key(s) txt")


def test_template_with_an_unknown_variable(tiny_model_dir, pairs_file, tmp_path):
    template = tmp_path / "mine.j2"
    template.write_text("{#- rlaif:\noptions: [A, B]\n-#}\n{{ conversation }} {{ principle }} {{ reponse_a }}\n"
                        "(A) {{ response_a }} (B) {{ response_b }} The answer is: (")
    result = run("--input", pairs_file, "--out", str(tmp_path / "o.jsonl"), "--model", tiny_model_dir,
                 "--template", str(template))
    assert_one_line_error(result, "unknown variable", "reponse_a")


def test_output_exists_without_resume_or_overwrite(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text("")
    result = run("--input", pairs_file, "--out", str(out), "--model", tiny_model_dir)
    assert_one_line_error(result, "exists", "--resume", "--overwrite")


def test_model_dir_without_config(pairs_file, tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    result = run("--input", pairs_file, "--out", str(tmp_path / "o.jsonl"), "--model", str(empty))
    assert_one_line_error(result, "no config.json")


def test_unreachable_hub_model(pairs_file, tmp_path):
    result = run("--input", pairs_file, "--out", str(tmp_path / "o.jsonl"), "--model", "no-such-org/no-such-model")
    assert_one_line_error(result, "Model 'no-such-org/no-such-model' is not in the local Hugging Face cache",
                          "HF_HUB_OFFLINE is set")


def test_tokenizer_that_cannot_spell_the_options(no_ab_model_dir, pairs_file, tmp_path):
    out = tmp_path / "o.jsonl"
    result = run("--input", pairs_file, "--out", str(out), "--model", no_ab_model_dir, "--no-cache")
    assert_one_line_error(result, "cannot spell the option 'A'")
    assert not out.exists() or lines(out) == []


def test_unknown_config_key(pairs_file, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("modle: default\n")
    result = run("--config", str(config), "--input", pairs_file, "--out", str(tmp_path / "o.jsonl"))
    assert_one_line_error(result, "unknown option(s) modle")


def test_config_file_keys_are_the_flag_names(tiny_model_dir, pairs_file, tmp_path):
    config = tmp_path / "label.yaml"
    out = tmp_path / "labels.jsonl"
    config.write_text(f"input: {pairs_file}\nout: {out}\nmodel: {tiny_model_dir}\nprinciples: one\nno_cache: true\n")
    result = run("--config", str(config))
    assert result.exit_code == 0, result.output
    assert len(lines(out)) == 3


def test_model_retrained_in_place_is_not_served_stale_cache(save_model, pairs_file, tmp_path):
    model = tmp_path / "model"
    args = ["--input", pairs_file, "--model", str(model), "--principles", "one", "--cache-dir", str(tmp_path / "c")]
    p_a = []
    for seed in (0, 1):
        save_model(model, seed=seed)  # same architecture, same file sizes, other weights
        out = tmp_path / f"labels-{seed}.jsonl"
        assert run(*args, "--out", str(out)).exit_code == 0
        fresh = tmp_path / f"fresh-{seed}.jsonl"
        assert run(*args, "--out", str(fresh), "--no-cache").exit_code == 0
        assert [r["p_a"] for r in lines(out)] == pytest.approx([r["p_a"] for r in lines(fresh)], abs=1e-6)
        p_a.append([r["p_a"] for r in lines(fresh)])
    assert p_a[0] != p_a[1]
