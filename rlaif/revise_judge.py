"""Does self-correction help? A feedback model judges every round of a revise chain.

With `--judge M` the labelling engine (rlaif.label, both orders, the judge's
principles) compares each round's revision (response A) with the text it
revised (response B), and the final text with the initial response; the
label's p_a is stored as the round's `p_better` and the chain's
`p_final_better`. Texts that did not change are not sent to the judge: 0.5.

Per round, over prompts, as in SCoRe (Kumar et al. 2024) with the judge
standing in for correctness:
    improved = share with p_better > 0.5      (~ Δ i→c, incorrect -> correct)
    worse    = share with p_better < 0.5      (~ Δ c→i, correct -> incorrect)
    delta    = improved - worse               (~ Δ(t1, t2))
"""

from __future__ import annotations

from typing import Any

from rlaif.backends import Backend
from rlaif.label import LabelConfig, Labeller
from rlaif.records import content_id


class ChainJudge:
    """Labels revise chains in place: `p_better` on every round, `p_final_better` on the chain."""

    def __init__(self, config: LabelConfig, backend: Backend | None = None):
        self.labeller = Labeller(config, backend)
        self.labeller.engine.table(self.labeller.template.option_spellings())  # unspellable options fail now

    def meta(self) -> dict[str, Any]:
        meta = self.labeller.meta()
        return {key: meta[key] for key in ("model", "template", "template_sha256", "constitution",
                                           "constitution_sha256", "principles")}

    def judge(self, chains: list[dict[str, Any]]) -> None:
        jobs = []  # (record to annotate, key, pair)
        for chain in chains:
            before = chain["initial"]
            for step in chain["rounds"]:
                pair = _pair(chain, step["revision"], before)
                jobs.append((step, "p_better", pair))
                before = step["revision"]
            pair = _pair(chain, chain["final"], chain["initial"])
            jobs.append((chain, "p_final_better", pair))
        changed = [pair for _, _, pair in jobs if pair["response_a"].strip() != pair["response_b"].strip()]
        p_a = {label.id: label.p_a for label in self.labeller.label(changed)} if changed else {}
        for record, key, pair in jobs:
            record[key] = p_a.get(pair["id"], 0.5)


def _pair(chain: dict[str, Any], new: str, old: str) -> dict[str, str]:
    """The judged pair; its id (which seeds the principle choice) comes from the texts, so the same
    comparison (a one-round chain's round and final) gets the same principles and the same label."""
    return {"id": f"{chain['id']}:{content_id(new, old)}", "prompt": chain["prompt"], "response_a": new, "response_b": old}


def share_stats(values: list[float]) -> dict[str, float]:
    """improved / worse / unchanged shares, delta = improved - worse, and the mean p_better."""
    n = len(values)
    improved = sum(v > 0.5 for v in values) / n
    worse = sum(v < 0.5 for v in values) / n
    return {"n": n, "improved": improved, "worse": worse, "unchanged": sum(v == 0.5 for v in values) / n,
            "delta": improved - worse, "mean_p_better": sum(values) / n}


def judge_stats(chains: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-round and final-vs-initial shares over the judged chains."""
    judged = [c for c in chains if "p_final_better" in c]
    if not judged:
        return {}
    rounds = max(len(c["rounds"]) for c in judged)
    per_round = []
    for number in range(1, rounds + 1):
        values = [c["rounds"][number - 1]["p_better"] for c in judged if len(c["rounds"]) >= number]
        per_round.append({"round": number, **share_stats(values)})
    return {"rounds": per_round, "final_vs_initial": share_stats([c["p_final_better"] for c in judged])}
