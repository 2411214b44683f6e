"""Alignment metrics against hand-computed values on tiny inputs, and the human-pair input."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from rlaif.align import (
    AlignConfig,
    Scored,
    agreement,
    alignment,
    baselines,
    bootstrap_ci,
    build_pairs,
    build_report,
    calibration,
    coin_range,
    length_bias,
    match_labels,
    option_mass,
    picked_slots,
    position_bias,
    principle_alignment,
    read_human_pairs,
)
from rlaif.errors import RlaifError

CFG = AlignConfig(n_boot=2000, n_bins=10, seed=0)


def make(human_a, p_a, p_ab=None, p_ba=None, len_a=5, len_b=5, mass=None, by=None, orders=None, pid="x"):
    return Scored(id=pid, human_a=human_a, p_a=p_a, p_a_ab=p_a if p_ab is None else p_ab,
                  p_a_ba=p_a if p_ba is None else p_ba, len_a=len_a, len_b=len_b,
                  by_principle=by or {}, by_principle_orders=orders or {}, option_mass=mass)


@pytest.fixture
def four():
    """human_a, p_a -> agreement: (T, .8) 1; (F, .3) 1; (T, .5) tie .5; (F, .9) 0."""
    return [
        make(True, 0.8, len_a=10, len_b=5, mass=0.9),
        make(False, 0.3, len_a=3, len_b=9, mass=0.5),
        make(True, 0.5, len_a=4, len_b=4),
        make(False, 0.9, len_a=8, len_b=2, mass=0.7),
    ]


def test_agreement_counts_ties_half():
    assert agreement(np.array([0.9, 0.5, 0.1, 0.5 + 1e-12, 0.51])).tolist() == [1.0, 0.5, 0.0, 0.5, 1.0]


def test_alignment_with_ties(four):
    result = alignment(four, CFG)
    assert result["value"] == pytest.approx(2.5 / 4)
    assert result["n"] == 4
    assert result["low"] <= 0.625 <= result["high"]


def test_alignment_per_order():
    pairs = [make(True, 0.6, p_ab=0.9, p_ba=0.3), make(False, 0.4, p_ab=0.2, p_ba=0.6), make(True, 0.5, p_ab=0.5, p_ba=0.5)]
    # order AB: p_h = .9, .8, .5 -> 1, 1, .5; order BA: p_h = .3, .4, .5 -> 0, 0, .5
    assert alignment(pairs, CFG, "p_a_ab")["value"] == pytest.approx(2.5 / 3)
    assert alignment(pairs, CFG, "p_a_ba")["value"] == pytest.approx(0.5 / 3)
    assert alignment(pairs, CFG)["value"] == pytest.approx(2.5 / 3)


def test_bootstrap_constant_is_degenerate():
    assert bootstrap_ci(np.ones(7), n_boot=50, seed=3) == (1.0, 1.0)
    assert bootstrap_ci(np.full(3, 0.5), n_boot=50, seed=3) == (0.5, 0.5)


def test_bootstrap_bounds_by_hand():
    # [0, 1]: resample means 0, .5, 1 with prob 1/4, 1/2, 1/4 -> 2.5th pct 0, 97.5th pct 1.
    assert bootstrap_ci(np.array([0.0, 1.0]), n_boot=2000, seed=0) == (0.0, 1.0)
    # [0, 0, 0, 1]: P(mean >= 3/4) = 13/256 > 2.5% but P(mean = 1) = 1/256 < 2.5% -> [0, 0.75].
    assert bootstrap_ci(np.array([0.0, 0.0, 0.0, 1.0]), n_boot=4000, seed=0) == (0.0, 0.75)


def test_bootstrap_is_seeded():
    values = np.array([0, 1, 1, 0.5, 1, 0, 1, 1, 1, 0])
    assert bootstrap_ci(values, 500, seed=7) == bootstrap_ci(values, 500, seed=7)
    assert bootstrap_ci(values, 500, seed=7) != bootstrap_ci(values, 500, seed=8)
    rng = np.random.default_rng(7)  # the definition: percentile of means of seeded resamples
    means = values[rng.integers(0, 10, size=(500, 10))].mean(axis=1)
    assert bootstrap_ci(values, 500, seed=7) == tuple(np.percentile(means, [2.5, 97.5]))


def test_picked_slots():
    slot_ab, slot_ba = picked_slots(np.array([0.8, 0.2, 0.5]), np.array([0.3, 0.3, 0.7]))
    assert slot_ab.tolist() == [1, 2, 0]
    assert slot_ba.tolist() == [1, 1, 2]  # BA shows B first: p_a_ba < .5 picks slot 1


def test_position_bias_by_hand():
    pairs = [
        make(True, 0.55, p_ab=0.8, p_ba=0.3),  # slot 1 both times
        make(True, 0.8, p_ab=0.7, p_ba=0.9),  # A both times: follows content
        make(True, 0.4, p_ab=0.2, p_ba=0.6),  # slot 2 both times
        make(True, 0.35, p_ab=0.5, p_ba=0.2),  # a tie in AB
    ]
    result = position_bias(pairs, CFG)
    assert result["same_slot"]["value"] == pytest.approx(0.5)
    assert (result["slot_1"], result["slot_2"], result["favoured"]) == (0.25, 0.25, "neither")
    assert result["tie_in_an_order"] == 0.25
    # slot-1 picks, AB: 1, 1, 0, .5; BA: 1, 0, 0, 1 -> 4.5 / 8
    assert result["p_first"] == pytest.approx(4.5 / 8)
    first_heavy = position_bias(pairs[:2] + [make(True, 0.5, p_ab=0.9, p_ba=0.1)], CFG)
    assert first_heavy["same_slot"]["value"] == pytest.approx(2 / 3)
    assert first_heavy["favoured"] == "first"


def test_principle_alignment_by_hand():
    pairs = [
        make(True, 0.7, by={"harm": 0.9, "help": 0.4}, orders={"harm": [0.9, 0.9], "help": [0.7, 0.1]}),
        make(False, 0.5, by={"harm": 0.2, "help": 0.5}, orders={"harm": [0.2, 0.2], "help": [0.5, 0.5]}),
        make(False, 0.8, by={"harm": 0.8}, orders={"harm": [0.9, 0.7]}),
    ]
    result = principle_alignment(pairs, CFG)
    assert list(result) == ["harm", "help"]
    assert result["harm"]["value"] == pytest.approx(2 / 3) and result["harm"]["n"] == 3
    assert result["help"]["value"] == pytest.approx(0.25) and result["help"]["n"] == 2  # 0 and a tie
    assert result["harm"]["same_slot"] == 0.0
    assert result["help"]["same_slot"] == pytest.approx(0.5)  # [.7, .1]: slot 1 in both orders


def test_calibration_brier_and_ece_by_hand():
    pairs = [make(True, 0.9), make(False, 0.8), make(False, 0.3), make(True, 0.1)]
    # Brier: (.1^2 + .8^2 + .3^2 + .9^2) / 4 = 1.55 / 4
    ten = calibration(pairs, 10)
    assert ten["brier"] == pytest.approx(0.3875)
    assert ten["ece"] == pytest.approx((0.1 + 0.8 + 0.3 + 0.9) / 4)  # one pair a bin
    assert [b["low"] for b in ten["bins"]] == pytest.approx([0.1, 0.3, 0.8, 0.9])
    two = calibration(pairs, 2)
    # [0, .5): mean p .2 vs human .5; [.5, 1]: mean p .85 vs human .5 -> .5 * .3 + .5 * .35
    assert two["ece"] == pytest.approx(0.325)
    assert two["bins"] == [
        {"low": 0.0, "high": 0.5, "n": 2, "mean_p_a": pytest.approx(0.2), "human_a_rate": 0.5},
        {"low": 0.5, "high": 1.0, "n": 2, "mean_p_a": pytest.approx(0.85), "human_a_rate": 0.5},
    ]
    assert calibration([make(True, 1.0), make(False, 0.0)], 10) == {
        "brier": 0.0, "ece": 0.0,
        "bins": [{"low": 0.0, "high": 0.1, "n": 1, "mean_p_a": 0.0, "human_a_rate": 0.0},
                 {"low": 0.9, "high": 1.0, "n": 1, "mean_p_a": 1.0, "human_a_rate": 1.0}],
    }


def test_length_bias_by_hand(four):
    result = length_bias(four, CFG)
    # longer picked by the labeller: 1, 1, (equal lengths left out), 1; by the humans: 1, 1, 0
    assert result["ai_picks_longer"]["value"] == 1.0
    assert result["human_picks_longer"]["value"] == pytest.approx(2 / 3)
    assert result["ai_picks_longer"]["n"] == 3 and result["n_equal_length"] == 1
    tie = length_bias([make(True, 0.5, len_a=3, len_b=1), make(True, 0.9, len_a=1, len_b=3)], CFG)
    assert tie["ai_picks_longer"]["value"] == pytest.approx(0.25)  # a tie (.5) and a pick of the shorter (0)
    assert tie["human_picks_longer"]["value"] == pytest.approx(0.5)


def test_baselines_by_hand(four):
    result = baselines(four, CFG)
    # always longer: human chose the longer 1, 1, equal .5, shorter 0
    assert result["always_longer"]["value"] == pytest.approx(0.625)
    assert result["always_shorter"]["value"] == pytest.approx(0.375)
    assert result["random"] == {"value": 0.5, "low": 0.0, "high": 1.0, "n": 4}


def test_coin_range_exact_binomial():
    assert coin_range(4) == (0.0, 1.0)  # P(0) = 1/16 > 2.5%
    assert coin_range(10) == (0.2, 0.8)  # CDF(1) = 11/1024 < 2.5% <= CDF(2) = 56/1024
    low, high = coin_range(1000)
    assert low == pytest.approx(0.469, abs=0.002) and high == pytest.approx(0.531, abs=0.002)


def test_option_mass(four):
    assert option_mass(four) == {"mean": pytest.approx(0.7), "median": 0.7, "min": 0.5, "n": 3}
    assert option_mass([make(True, 0.5)])["mean"] is None


def test_build_report(four):
    report = build_report(four, Counter({"empty chosen": 2}), 6, CFG, {"model": "m"})
    assert report["n_scored"] == 4 and report["n_input"] == 6 and report["skipped"] == {"empty chosen": 2}
    assert report["alignment"]["value"] == pytest.approx(0.625)
    assert report["share_human_a"] == 0.5
    assert report["settings"] == {"n_boot": 2000, "n_bins": 10, "seed": 0}
    assert any("chance" in w for w in report["warnings"])
    assert any("Only 4 pairs" in w for w in report["warnings"])
    json.dumps(report)  # JSON-ready
    with pytest.raises(RlaifError, match="No pair could be scored .*3 no label"):
        build_report([], Counter({"no label for the pair": 3}), 3, CFG)


def test_config_rejects_bad_values():
    with pytest.raises(RlaifError, match="n_boot"):
        AlignConfig(n_boot=0)


# ---------------------------------------------------------------- input


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_read_human_pairs_skips_bad_rows(tmp_path):
    path = write_jsonl(tmp_path / "h.jsonl", [
        {"id": "1", "prompt": "p", "chosen": "good", "rejected": "bad"},
        {"id": "2", "prompt": "p", "chosen": " ", "rejected": "bad"},
        {"id": "3", "prompt": "p", "chosen": "same", "rejected": "same "},
        {"id": "1", "prompt": "q", "chosen": "x", "rejected": "y"},
        {"prompt": "q", "chosen": [{"role": "assistant", "content": "hi"}], "rejected": "yo"},
    ])
    pairs, skipped = read_human_pairs(path)
    assert [p["chosen"] for p in pairs] == ["good", "hi"]
    assert skipped == {"empty chosen": 1, "chosen and rejected identical": 1, "duplicate id": 1}
    assert len(pairs[1]["id"]) == 16  # made from the text


def test_read_human_pairs_column_map_csv(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("question,good,bad\nq1,yes,no\nq2,,no\n", encoding="utf-8")
    pairs, skipped = read_human_pairs(path, {"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [("q1", "yes", "no")]
    assert skipped == {"empty chosen": 1}


def test_read_human_pairs_errors(tmp_path):
    path = write_jsonl(tmp_path / "h.jsonl", [{"prompt": "p", "good": "a", "rejected": "b"}])
    with pytest.raises(RlaifError, match=r"lacks column\(s\) chosen; it has: good, prompt, rejected.*--column-map"):
        read_human_pairs(path)
    path = write_jsonl(tmp_path / "same.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "a"}])
    with pytest.raises(RlaifError, match="no usable pair is left \\(1 chosen and rejected identical\\)"):
        read_human_pairs(path)


def test_build_pairs_puts_chosen_first_in_half():
    humans = [{"id": str(i), "prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(11)]
    pairs = build_pairs(humans, seed=0)
    assert sum(p["human"] == "a" for p in pairs) == 6
    for h, p in zip(humans, pairs):
        chosen_slot = "response_a" if p["human"] == "a" else "response_b"
        assert p[chosen_slot] == h["chosen"] and {p["response_a"], p["response_b"]} == {h["chosen"], h["rejected"]}
    assert build_pairs(humans, seed=0) == pairs
    assert [p["human"] for p in build_pairs(humans, seed=1)] != [p["human"] for p in pairs]
    assert [p["human"] for p in build_pairs(humans[::-1], seed=0)] == [p["human"] for p in pairs[::-1]]


def label_row(pid, prompt, a, b, p_a, **extra):
    return {"id": pid, "prompt": prompt, "response_a": a, "response_b": b, "p_a": p_a, "p_a_ab": p_a, "p_a_ba": p_a,
            "by_principle": {}, "by_principle_orders": {}, "option_mass": 0.9, **extra}


def test_match_labels_by_id_then_text():
    humans = [{"id": "1", "prompt": "p", "chosen": "good", "rejected": "bad"},
              {"id": "2", "prompt": "q", "chosen": "yes", "rejected": "no"},
              {"id": "3", "prompt": "r", "chosen": "up", "rejected": "down"},
              {"id": "4", "prompt": "s", "chosen": "in", "rejected": "out"}]
    labels = [label_row("1", "p", "bad", "good", 0.2),  # human's choice in slot b
              label_row("other", "q", "yes", "no", 0.7),  # matched by text
              label_row("4", "s", "in", "out", None)]
    scored, skipped = match_labels(humans, labels)
    assert [(s.id, s.human_a, s.p_a) for s in scored] == [("1", False, 0.2), ("other", True, 0.7)]
    assert skipped == {"no label for the pair": 1, "label lacks p_a, p_a_ab or p_a_ba in [0, 1]": 1}
    assert alignment(scored, CFG)["value"] == 1.0


def test_read_human_pairs_parquet_and_saved_dataset(tmp_path):
    import pandas as pd
    from datasets import Dataset

    rows = {"prompt": ["p1", "p2"], "chosen": ["good", "fine"], "rejected": ["bad", "fine"]}
    pd.DataFrame(rows).to_parquet(tmp_path / "h.parquet")
    Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    for path in (tmp_path / "h.parquet", tmp_path / "ds"):
        pairs, skipped = read_human_pairs(path)
        assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [("p1", "good", "bad")]
        assert skipped == {"chosen and rejected identical": 1}
