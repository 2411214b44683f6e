"""Labelling with a fake back end whose log-probs are known: exact p_a, ensembles, CoT, seeding, resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from rlaif.constitution import choose_principles, load_constitution
from rlaif.errors import RlaifError
from rlaif.runs import meta_path
from rlaif.label import LabelConfig, Labeller, label_pairs
from rlaif.resources import data_dir

CONSTITUTION = """\
name: tiny
description: two principles the fake back end tells apart
principles:
  - id: kind
    text: Choose the kind response.
  - id: honest
    text: Choose the honest response.
few_shot:
  - conversation: "Human: what is two plus two?"
    response_a: four
    response_b: two
    answer: A
cot_few_shot:
  - conversation: "Human: what is two plus two?"
    response_a: four
    response_b: two
    rationale: four is more honest
    answer: A
"""

# A shown first holds "good" in "( A ) good"; the swapped prompt shows "( A ) bad".
RULES = [
    (("kind", "(A) good"), {"A": 0.6, "B": 0.2}),    # q_ab = 0.75
    (("kind", "(A) bad"), {"A": 0.5, "B": 0.3}),     # q_ba = P(B) / 0.8 = 0.375
    (("honest", "(A) good"), {"A": 0.9, "B": 0.1}),  # q_ab = 0.9
    (("honest", "(A) bad"), {"A": 0.2, "B": 0.6}),   # q_ba = 0.75
]
PAIR = {"id": "p1", "prompt": "Human: hello\n\nAssistant:", "response_a": "good", "response_b": "bad"}


@pytest.fixture(scope="module")
def constitution(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("const") / "tiny.yaml"
    path.write_text(CONSTITUTION)
    return str(path)


def config(constitution: str, **kwargs) -> LabelConfig:
    return LabelConfig(**{"model": "fake", "constitution": constitution, "principles": "all", "no_cache": True,
                          **kwargs})


def test_swap_averaging_one_principle(make_fake, constitution):
    [label] = Labeller(config(constitution, only=("kind",)), make_fake(RULES)).label([PAIR])
    assert label.p_a_ab == pytest.approx(0.75, abs=1e-12)
    assert label.p_a_ba == pytest.approx(0.375, abs=1e-12)
    assert label.p_a == pytest.approx(0.5625, abs=1e-12)
    assert label.by_principle == pytest.approx({"kind": 0.5625}, abs=1e-12)
    assert label.by_principle_orders["kind"] == pytest.approx([0.75, 0.375], abs=1e-12)
    assert label.option_mass == pytest.approx(0.8, abs=1e-12)
    assert (label.chosen, label.rejected) == ("good", "bad") and label.rationale is None


def test_a_labeller_that_always_picks_the_first_slot_gives_one_half(make_fake, constitution):
    fake = make_fake([("Options", {"A": 0.7, "B": 0.3})])
    [label] = Labeller(config(constitution), fake).label([PAIR])
    assert (label.p_a_ab, label.p_a_ba) == pytest.approx((0.7, 0.3), abs=1e-12)
    assert label.p_a == pytest.approx(0.5, abs=1e-12)


def test_ensemble_over_principles(make_fake, constitution):
    fake = make_fake(RULES)
    [label] = Labeller(config(constitution), fake).label([PAIR])
    assert label.by_principle == pytest.approx({"kind": 0.5625, "honest": 0.825}, abs=1e-12)
    assert label.p_a == pytest.approx((0.5625 + 0.825) / 2, abs=1e-12)
    assert label.p_a_ab == pytest.approx((0.75 + 0.9) / 2, abs=1e-12)
    assert label.p_a_ba == pytest.approx((0.375 + 0.75) / 2, abs=1e-12)
    assert label.option_mass == pytest.approx((0.8 + 0.8 + 1.0 + 0.8) / 4, abs=1e-12)
    assert len(fake.contexts) == 4  # 2 principles x 2 orders, nothing else


def test_several_pairs_in_one_call_keep_their_own_labels(make_fake, constitution):
    flipped = {**PAIR, "id": "p2", "response_a": "bad", "response_b": "good"}
    labels = Labeller(config(constitution, only=("kind",)), make_fake(RULES)).label([PAIR, flipped])
    assert [x.id for x in labels] == ["p1", "p2"]
    # flipped: q_ab from "( A ) bad" = 0.625, q_ba = P(B) in "( A ) good" = 0.25
    assert [x.p_a for x in labels] == pytest.approx([0.5625, 0.4375], abs=1e-12)
    assert labels[1].chosen == "good" and labels[1].rejected == "bad"


def cot_fake(make_fake):
    return make_fake(RULES, rationale="good is ok\nHuman: and then?")


@pytest.mark.parametrize(("only", "low", "high", "expected"), [
    (("kind",), 0.4, 0.6, 0.5625),   # inside the bounds: unchanged
    (("honest",), 0.4, 0.6, 0.6),     # 0.825 clamped
    (("honest",), 0.3, 0.7, 0.7),     # custom bounds
])
def test_cot_clamps_p_a(make_fake, constitution, only, low, high, expected):
    fake = cot_fake(make_fake)
    cfg = config(constitution, only=only, cot=True, clamp_low=low, clamp_high=high)
    [label] = Labeller(cfg, fake).label([PAIR])
    assert label.p_a == pytest.approx(expected, abs=1e-12)
    assert label.rationale == {only[0]: ["good is ok", "good is ok"]}  # trimmed at the new turn


@pytest.mark.parametrize(("low", "expected"), [(0.4, 0.4), (0.3, 0.3), (0.1, 0.175)])
def test_cot_clamps_from_below(make_fake, constitution, low, expected):
    flipped = {**PAIR, "response_a": "bad", "response_b": "good"}  # honest: q_ab 0.25, q_ba 0.1 -> 0.175
    [label] = Labeller(config(constitution, only=("honest",), cot=True, clamp_low=low), cot_fake(make_fake)).label(
        [flipped])
    assert label.p_a == pytest.approx(expected, abs=1e-12)
    assert (label.p_a_ab, label.p_a_ba) == pytest.approx((0.25, 0.1), abs=1e-12)  # the orders are not clamped


def test_cot_scores_after_rationale_and_answer_stub(make_fake, constitution):
    fake = cot_fake(make_fake)
    Labeller(config(constitution, only=("kind",), cot=True, few_shot=1), fake).label([PAIR])
    assert len(fake.generated_for) == 2 and all(p.rstrip().endswith("Let's think step by step:")
                                                for p in fake.generated_for)
    assert all("Let's think step by step: four is more honest" in p for p in fake.generated_for)  # cot_few_shot
    stub = "step by step : good is ok Therefore , the answer is : ("
    assert len(fake.contexts) == 2 and all(c.endswith(stub) for c in fake.contexts)


def test_bad_clamp_bounds_are_an_error():
    with pytest.raises(RlaifError, match="Clamp bounds"):
        LabelConfig(clamp_low=0.6, clamp_high=0.7)


def test_few_shot_examples_are_rendered_before_the_pair(make_fake, constitution):
    fake = make_fake(RULES)
    Labeller(config(constitution, only=("kind",), few_shot=1), fake).label([PAIR])
    example = "Human : what is two plus two ? Choose the kind response . Options : ( A ) four ( B ) two " \
              "The answer is : ( A )"
    assert len(fake.contexts) == 2 and all(example in c for c in fake.contexts)
    assert all(c.index(example) < c.index("( A ) good") if "( A ) good" in c else True for c in fake.contexts)
    plain = make_fake(RULES)
    Labeller(config(constitution, only=("kind",)), plain).label([PAIR])
    assert not any("four" in c for c in plain.contexts)


def test_the_rendered_prompt_is_the_cai_format(make_fake, constitution):
    fake = make_fake(RULES)
    Labeller(config(constitution, only=("kind",)), fake).label([PAIR])
    assert fake.contexts[0] == ("Consider the following conversation between a human and an assistant : Human : "
                                "hello Choose the kind response . Options : ( A ) good ( B ) bad The answer is : (")
    assert fake.contexts[1].endswith("( A ) bad ( B ) good The answer is : (")


# ---- principle choice ------------------------------------------------------------------------------

IDS = [f"pair-{i}" for i in range(60)]


def test_principle_choice_is_seeded_by_pair_id():
    cai = load_constitution("cai-harmless")
    for pid in IDS[:10]:
        assert choose_principles(cai, "k", pid, seed=3, k=4) == choose_principles(cai, "k", pid, seed=3, k=4)
        assert choose_principles(cai, "one", pid, seed=3) == choose_principles(cai, "one", pid, seed=3)
    by_seed = [[choose_principles(cai, "one", pid, seed=s)[0].id for pid in IDS] for s in (0, 1)]
    assert by_seed[0] != by_seed[1]
    assert len(set(by_seed[0])) > 5  # one per pair, spread over the 16 principles


def test_principle_modes():
    cai = load_constitution("cai-harmless")
    assert choose_principles(cai, "all", "x") == cai.principles
    for pid in IDS:
        assert len(choose_principles(cai, "one", pid)) == 1
        chosen = choose_principles(cai, "k", pid, k=3)
        assert len({p.id for p in chosen}) == 3 and all(p in cai.principles for p in chosen)
    assert choose_principles(cai, "k", "x", k=99) == cai.principles  # k beyond the pool: all of them
    only = ["harmless-ethical", "mlk-gandhi"]
    assert {p.id for p in choose_principles(cai, "one", "x", only=only)} <= set(only)
    assert [p.id for p in choose_principles(cai, "all", "x", only=only)] == only
    with pytest.raises(RlaifError, match="at least 1"):
        choose_principles(cai, "k", "x", k=0)


def test_labeller_uses_the_seeded_choice(make_fake):
    cai = load_constitution("cai-harmless")
    pairs = [{**PAIR, "id": pid} for pid in IDS[:5]]
    fake = make_fake([])
    labels = Labeller(LabelConfig(model="fake", principles="k", k=2, seed=7, no_cache=True), fake).label(pairs)
    for pair, label in zip(pairs, labels):
        assert set(label.by_principle) == {p.id for p in choose_principles(cai, "k", pair["id"], seed=7, k=2)}
        assert label.p_a == pytest.approx(0.5, abs=1e-12)  # uniform fake: no preference
    # the 5 pairs share their text: each (principle, order) prompt is scored once, however many pairs ask for it
    wanted = {(p.id, swapped) for pair in pairs for p in choose_principles(cai, "k", pair["id"], seed=7, k=2)
              for swapped in (False, True)}
    assert len(fake.contexts) == len(set(fake.contexts)) == len(wanted)


def test_unknown_principle_says_did_you_mean(make_fake):
    with pytest.raises(RlaifError, match=r"Unknown principle 'harmles-ethical'.*Did you mean: harmless-ethical"):
        Labeller(LabelConfig(model="does-not-exist", only=("harmles-ethical",)))


def test_unknown_constitution_says_did_you_mean():
    with pytest.raises(RlaifError, match=r"Unknown constitution 'cai-harmles'.*Did you mean: cai-harmless"):
        Labeller(LabelConfig(model="does-not-exist", constitution="cai-harmles"))


def test_template_with_unknown_variable_fails_before_the_model_loads(tmp_path):
    template = tmp_path / "t.j2"
    template.write_text("{#- rlaif:\noptions: [A, B]\n-#}\n{{ conversation }} {{ principle }} {{ nonsense }}\n"
                        "(A) {{ response_a }} (B) {{ response_b }} The answer is: (")
    with pytest.raises(RlaifError, match="unknown variable.*nonsense"):
        Labeller(LabelConfig(model="does-not-exist", template=str(template)))


def test_user_template_is_sandboxed(tmp_path):
    template = tmp_path / "t.j2"
    template.write_text("{#- rlaif:\noptions: [A, B]\n-#}\n{{ conversation.__class__.__mro__ }} {{ principle }}\n"
                        "(A) {{ response_a }} (B) {{ response_b }} (")
    with pytest.raises(RlaifError):
        Labeller(LabelConfig(model="does-not-exist", template=str(template)))


def test_cot_needs_a_template_with_an_answer_stub():
    with pytest.raises(RlaifError, match="answer_stub"):
        Labeller(LabelConfig(model="does-not-exist", cot=True, template="drlaif-score"))


# ---- label_pairs: files, resume, overwrite -----------------------------------------------------------

PAIRS = [{**PAIR, "id": f"p{i}", "prompt": f"Human: hello {i}",
          "response_a": "good" if i % 2 else "bad", "response_b": "bad" if i % 2 else "good"} for i in range(5)]


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_label_pairs_writes_rows_and_meta(make_fake, constitution, tmp_path):
    out = tmp_path / "labels.jsonl"
    fake = make_fake(RULES)
    rows = label_pairs(PAIRS, config(constitution, only=("kind",), chunk_pairs=2), out, backend=fake,
                       progress=False)
    assert [r["id"] for r in rows] == [p["id"] for p in PAIRS] == [r["id"] for r in lines(out)]
    assert [r["p_a"] for r in rows] == pytest.approx([0.4375, 0.5625] * 2 + [0.4375], abs=1e-12)
    assert fake.calls == 3  # chunks of 2, 2, 1
    meta = json.loads(meta_path(out).read_text())
    template_sha = hashlib.sha256((data_dir("templates") / "cai_choice.j2").read_bytes()).hexdigest()
    assert meta["status"] == "done" and meta["pairs"] == 5 and meta["labelled_this_run"] == 5
    assert meta["model"] == "fake-model" and meta["constitution"] == "tiny" and meta["template"] == "cai-choice"
    assert meta["template_sha256"] == template_sha and meta["config"]["only"] == ["kind"]
    assert meta["constitution_sha256"] == hashlib.sha256(CONSTITUTION.encode()).hexdigest()
    assert rows[0]["meta"]["model"] == "fake-model" and rows[0]["meta"]["template_sha256"] == template_sha


def test_resume_does_not_call_the_back_end_again(make_fake, constitution, tmp_path):
    out = tmp_path / "labels.jsonl"
    cfg = config(constitution, chunk_pairs=2)
    first = label_pairs(PAIRS, cfg, out, backend=make_fake(RULES), progress=False)
    again = make_fake(RULES)
    assert label_pairs(PAIRS, cfg, out, backend=again, progress=False) == first
    assert again.calls == 0 and len(lines(out)) == 5


def test_resume_labels_only_the_missing_pairs(make_fake, constitution, tmp_path):
    out = tmp_path / "labels.jsonl"
    cfg = config(constitution, only=("kind",))
    label_pairs(PAIRS[:2], cfg, out, backend=make_fake(RULES), progress=False)
    fake = make_fake(RULES)
    rows = label_pairs(PAIRS, cfg, out, backend=fake, progress=False)
    assert len(fake.contexts) == 3 * 2 and [r["id"] for r in lines(out)] == [p["id"] for p in PAIRS]
    assert [r["id"] for r in rows] == [p["id"] for p in PAIRS]
    assert json.loads(meta_path(out).read_text())["labelled_this_run"] == 3


def test_rerun_after_deleting_the_output_is_served_by_the_cache(make_fake, constitution, tmp_path):
    out = tmp_path / "labels.jsonl"
    cfg = config(constitution, no_cache=False, cache_dir=str(tmp_path / "cache"))
    first = label_pairs(PAIRS, cfg, out, backend=make_fake(RULES), progress=False)
    out.unlink()
    fake = make_fake(RULES)
    assert label_pairs(PAIRS, cfg, out, backend=fake, progress=False) == first and fake.calls == 0
    assert json.loads(meta_path(out).read_text())["cache_hits"] == 5 * 2 * 2


def test_overwrite_relabels_and_other_settings_need_it(make_fake, constitution, tmp_path):
    out = tmp_path / "labels.jsonl"
    label_pairs(PAIRS, config(constitution, only=("kind",)), out, backend=make_fake(RULES), progress=False)
    other = config(constitution, only=("honest",))
    with pytest.raises(RlaifError, match="other settings.*--overwrite"):
        label_pairs(PAIRS, other, out, backend=make_fake(RULES), progress=False)
    fake = make_fake(RULES)
    rows = label_pairs(PAIRS, other, out, overwrite=True, backend=fake, progress=False)
    assert fake.calls > 0 and len(lines(out)) == 5
    assert all(set(r["by_principle"]) == {"honest"} for r in lines(out)) and rows == lines(out)
