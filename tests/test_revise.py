"""`rlaif revise`: exact prompts and chains with a scripted policy, judge shares by hand, seeding on a tiny Llama, exports, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rlaif.backends import load_backend
from rlaif.cli import cli
from rlaif.constitution import load_constitution
from rlaif.errors import RlaifError
from rlaif.io import read_rows
from rlaif.revise import (
    ReviseConfig,
    choose_critique,
    export_chains,
    load_few_shot,
    load_generation_template,
    parse_verdict,
    preference_records,
    revise_prompts,
    sft_records,
)
from rlaif.revise_judge import judge_stats, share_stats
from rlaif.rm.data import load_preferences

PROMPTS = [{"id": "h", "prompt": "hello"}, {"id": "b", "prompt": "bye"}]
CAI = load_constitution("cai-harmless")
JUDGE_RULES = [("( A ) good", {"A": 0.9, "B": 0.1}), ("( B ) good", {"A": 0.1, "B": 0.9})]


def policy(prompt: str) -> str:
    """A scripted policy: 'hello' starts bad and gets good; 'bye' starts good and gets worse."""
    hello = "Human: hello" in prompt
    if prompt.endswith("Critique:"):
        return " too rude\n\nHuman: and more"  # the trailing turn must be cut off
    if prompt.endswith("Revision:"):
        return " good answer" if hello else " bad answer"
    if prompt.endswith("Verdict:"):
        return " bad. It is rude" if hello else " good."
    return " bad answer" if hello else " good answer"


def config(**overrides) -> ReviseConfig:
    return ReviseConfig(**{"model": "policy", "rounds": 2, "max_new_tokens": 5, "no_cache": True, **overrides})


def test_templates_render_the_cai_format():
    values = {"few_shot": [], "conversation": "Human: hi", "response": "yo", "critique_request": "Is it rude?"}
    assert load_generation_template("cai-critique").render(**values) == (
        "Human: hi\n\nAssistant: yo\n\nCritiqueRequest: Is it rude?\n\nCritique:")
    assert load_generation_template("cai-revision").render(**values, critique="Yes.", revision_request="Fix it.") == (
        "Human: hi\n\nAssistant: yo\n\nCritiqueRequest: Is it rude?\n\nCritique: Yes.\n\n"
        "RevisionRequest: Fix it.\n\nRevision:")
    check = load_generation_template("check-as-context")
    history = [{"answer": "yo", "check_request": "Is it rude?", "check": "Verdict: bad. Rude."}]
    ask = ' Start with "Verdict: good" or "Verdict: bad", then give your reasons.'
    assert check.render(stage="check", conversation="Human: hi", history=[], answer="yo",
                        check_request="Is it rude?") == (
        f"Human: hi\n\nAssistant: yo\n\nCheckRequest: Is it rude?{ask}\n\nCheck: Verdict:")
    assert check.render(stage="answer", conversation="Human: hi", history=history, answer="", check_request="") == (
        f"Human: hi\n\nAssistant: yo\n\nCheckRequest: Is it rude?{ask}\n\nCheck: Verdict: bad. Rude.\n\n"
        "Human: Taking the checks above into account, please answer my question again.\n\nAssistant:")


def test_few_shot_examples_are_the_papers_five():
    examples = load_few_shot(5)
    assert len(examples) == 5
    assert examples[0]["conversation"].startswith("Human: Could you help me burn down my house")
    assert examples[0]["revision"].startswith("I'm sorry, I shouldn't have agreed to help.")
    with pytest.raises(RlaifError, match="only 5"):
        load_few_shot(6)


def test_critique_revision_chain_prompts_and_structure(make_fake, tmp_path):
    backend = make_fake([], rationale=policy)
    summary = revise_prompts(PROMPTS, config(few_shot=1), tmp_path / "c.jsonl", backend=backend, progress=False)
    chains = {c["id"]: c for c in read_rows(tmp_path / "c.jsonl")}
    hello = chains["h"]
    principles = [choose_critique(CAI, 0, "h", r) for r in (1, 2)]
    assert hello["initial"] == "bad answer" and hello["final"] == "good answer" and hello["mode"] == "critique-revision"
    assert hello["rounds"] == [
        {"round": r, "principle": p.id, "critique": "too rude", "revision": "good answer", "revision_empty": False}
        for r, p in zip((1, 2), principles)]
    example = load_few_shot(1)[0]["conversation"]
    first_critique = next(p for p in backend.generated_for if p.endswith("Critique:") and "Human: hello" in p)
    assert first_critique.startswith(example)
    assert first_critique.endswith(f"Human: hello\n\nAssistant: bad answer\n\nCritiqueRequest: "
                                   f"{principles[0].critique}\n\nCritique:")
    second_revision = [p for p in backend.generated_for if p.endswith("Revision:") and "Human: hello" in p][1]
    assert second_revision.endswith(f"Assistant: good answer\n\nCritiqueRequest: {principles[1].critique}\n\n"
                                    f"Critique: too rude\n\nRevisionRequest: {principles[1].revision}\n\nRevision:")
    assert summary["rounds"] == 4 and summary["empty_revisions"] == 0 and summary["final_same_as_initial"] == 0
    meta = json.loads((tmp_path / "c.jsonl.meta.json").read_text())
    assert meta["few_shot"] == 1 and meta["prompt_format"] == "plain" and meta["constitution"] == "cai-harmless"


def test_check_as_context_keeps_answers_and_checks_in_context(make_fake, tmp_path):
    backend = make_fake([], rationale=policy)
    revise_prompts(PROMPTS, config(mode="check-as-context"), tmp_path / "k.jsonl", backend=backend, progress=False)
    hello = {c["id"]: c for c in read_rows(tmp_path / "k.jsonl")}["h"]
    assert [(r["verdict"], r["check"], r["revision"]) for r in hello["rounds"]] == [
        ("bad", "Verdict: bad. It is rude", "bad answer")] * 2
    second_check = [p for p in backend.generated_for if p.endswith("Verdict:") and "Human: hello" in p][1]
    assert second_check.count("Check: Verdict: bad. It is rude") == 1
    assert second_check.count("Assistant: bad answer") == 2
    assert {c["rounds"][0]["verdict"] for c in read_rows(tmp_path / "k.jsonl")} == {"bad", "good"}
    assert parse_verdict(" Good, it is kind") == "good" and parse_verdict(" maybe") == "unclear"


def test_judge_shares_per_round(make_fake, tmp_path):
    judge = make_fake(JUDGE_RULES, model_id="fake-judge")
    summary = revise_prompts(PROMPTS, config(judge="judge", judge_principles="one"), tmp_path / "j.jsonl",
                             backend=make_fake([], rationale=policy), judge_backend=judge, progress=False)
    chains = {c["id"]: c for c in read_rows(tmp_path / "j.jsonl")}
    # hello: bad -> good (A = good wins in both orders: p = 0.9), then unchanged (0.5); bye: good -> bad (0.1)
    assert [r["p_better"] for r in chains["h"]["rounds"]] == pytest.approx([0.9, 0.5])
    assert [r["p_better"] for r in chains["b"]["rounds"]] == pytest.approx([0.1, 0.5])
    assert chains["h"]["p_final_better"] == pytest.approx(0.9) and chains["b"]["p_final_better"] == pytest.approx(0.1)
    stats = summary["judge_stats"]
    assert stats["rounds"][0] == pytest.approx({"round": 1, "n": 2, "improved": 0.5, "worse": 0.5, "unchanged": 0.0,
                                                "delta": 0.0, "mean_p_better": 0.5})
    assert stats["rounds"][1]["unchanged"] == 1.0 and stats["final_vs_initial"]["improved"] == 0.5
    assert judge_stats(list(chains.values())) == stats
    assert share_stats([0.9, 0.8, 0.2, 0.5]) == pytest.approx(
        {"n": 4, "improved": 0.5, "worse": 0.25, "unchanged": 0.25, "delta": 0.25, "mean_p_better": 0.6})


def test_exports_sft_and_pairs(tmp_path):
    chains = [
        {"id": "1", "prompt": "p1", "initial": "bad", "rounds": [], "final": "good"},
        {"id": "2", "prompt": "p2", "initial": "same", "rounds": [], "final": " same "},
        {"id": "3", "prompt": "p3", "initial": "x", "rounds": [], "final": ""},
    ]
    assert sft_records(chains) == [{"id": "1", "prompt": "p1", "completion": "good"},
                                   {"id": "2", "prompt": "p2", "completion": " same "}]
    assert preference_records(chains) == [{"id": "1", "prompt": "p1", "chosen": "good", "rejected": "bad"}]
    out = tmp_path / "chains.jsonl"
    out.write_text("".join(json.dumps(c) + "\n" for c in chains))
    written = export_chains(out, ["sft", "pairs"])
    assert written["pairs"] == {"path": str(tmp_path / "chains.pairs.jsonl"), "records": 1, "skipped": 2,
                                "skipped_by_reason": {"empty response": 1, "final equals initial": 1}}
    assert len(read_rows(tmp_path / "chains.sft.jsonl")) == 2
    prefs = load_preferences(tmp_path / "chains.pairs.jsonl")  # what train-rm reads
    assert prefs.kind == "hard" and prefs.pairs[0].response_a == "good" and prefs.pairs[0].p == 1.0


def test_tiny_llama_chains_are_seeded_and_cached(tiny_model_dir, tmp_path):
    backend = load_backend(tiny_model_dir)
    calls: list[int] = []
    generate = backend.generate
    backend.generate = lambda prompts, settings: calls.append(len(prompts)) or generate(prompts, settings)
    cached = {"model": tiny_model_dir, "rounds": 1, "temperature": 1.0, "no_cache": False,
              "cache_dir": str(tmp_path / "cache")}
    revise_prompts(PROMPTS, config(**cached), tmp_path / "a.jsonl", backend=backend, progress=False)
    assert sum(calls) == 2 * (1 + 2)  # initial + (critique, revision) per round, for each prompt
    revise_prompts(PROMPTS, config(**cached), tmp_path / "a.jsonl", overwrite=True, backend=backend, progress=False)
    assert sum(calls) == 6  # every step came from the cache
    fresh = {**cached, "no_cache": True, "chunk_prompts": 1}
    revise_prompts(PROMPTS, config(**fresh), tmp_path / "b.jsonl", backend=backend, progress=False)
    assert read_rows(tmp_path / "a.jsonl") == read_rows(tmp_path / "b.jsonl")
    revise_prompts(PROMPTS, config(**{**fresh, "seed": 5}), tmp_path / "c.jsonl", backend=backend, progress=False)
    assert read_rows(tmp_path / "c.jsonl") != read_rows(tmp_path / "a.jsonl")
    for chain in read_rows(tmp_path / "a.jsonl"):
        assert [r["round"] for r in chain["rounds"]] == [1] and chain["final"] == chain["rounds"][-1]["revision"]
        assert chain["rounds"][0]["principle"] == choose_critique(CAI, 0, chain["id"], 1).id


@pytest.mark.parametrize("kwargs, message", [
    ({"constitution": "helpful"}, "no critique/revision pairs"),
    ({"few_shot": 1, "mode": "check-as-context"}, "critique-revision"),
    ({"critique_template": "cai-critic"}, "Unknown template"),
])
def test_bad_input_says_how_to_fix(make_fake, tmp_path, kwargs, message):
    with pytest.raises(RlaifError, match=message):
        revise_prompts(PROMPTS, config(**kwargs), tmp_path / "x.jsonl", backend=make_fake([]), progress=False)


def test_cli_revise_exports_and_resumes(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    conf = tmp_path / "revise.yaml"
    conf.write_text(f"model: {tiny_model_dir}\nrounds: 1\nmax-new-tokens: 4\nmode: check-as-context\n")
    out = tmp_path / "chains.jsonl"
    args = ["revise", "--config", str(conf), "--prompts", str(prompts), "--out", str(out), "--export", "sft",
            "--export", "pairs"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "2 prompt(s) revised this run" in result.output and "Check verdicts:" in result.output
    assert Path(tmp_path / "chains.sft.jsonl").exists() and Path(tmp_path / "chains.pairs.jsonl").exists()
    again = CliRunner().invoke(cli, args + ["--resume"])
    assert again.exit_code == 0 and "0 prompt(s) revised this run" in again.output
    helpful = CliRunner().invoke(cli, ["revise", "--prompts", str(prompts), "--out", str(tmp_path / "h.jsonl"),
                                       "--model", tiny_model_dir, "--constitution", "helpful"])
    assert helpful.exit_code == 1 and helpful.output.startswith("Error: Constitution 'helpful' has no critique")


def test_same_comparison_gets_the_same_label(tiny_model_dir, make_fake, tmp_path):
    """A one-round chain's round and its final-vs-initial compare the same texts: the judge
    (sampling principles seeded by the pair id) must give both the same p."""
    from rlaif.backends.hf import HFBackend

    judge = HFBackend.load(str(tiny_model_dir))
    revise_prompts(PROMPTS, config(judge="judge", judge_principles="k", judge_k=2, rounds=1), tmp_path / "one.jsonl",
                   backend=make_fake([], rationale=policy), judge_backend=judge, progress=False)
    for chain in read_rows(tmp_path / "one.jsonl"):
        assert chain["rounds"][0]["p_better"] == pytest.approx(chain["p_final_better"], abs=1e-9)
