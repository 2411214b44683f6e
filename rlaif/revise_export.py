"""What `rlaif revise --export` writes beside a chains file: SFT records and preference pairs.

`sft`: prompt -> the chain's final revision (TRL prompt-completion), every non-empty
final. `pairs`: the final `chosen` over the initial response `rejected` (TRL
preference format, for train-rm or DPO); with a judge only the chains whose final
it preferred (`p_final_better` > 0.5), so no pair says a revision the judge rated
worse is better. Neither export holds a final that copies few-shot example text.
Each export's meta counts what was left out, by reason.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from rlaif import __version__
from rlaif.errors import RlaifError
from rlaif.few_shot import all_few_shot, cut_few_shot_copy, few_shot_ngrams, word_ngrams
from rlaif.io import RecordWriter, is_skip_row, read_jsonl, write_json
from rlaif.runs import meta_path

EXPORTS = ("sft", "pairs")


def export_path(out: str | Path, kind: str) -> Path:
    """chains.jsonl -> chains.sft.jsonl / chains.pairs.jsonl."""
    out = Path(out)
    return out.with_name(f"{out.stem if out.suffix else out.name}.{kind}.jsonl")


def copies_few_shot(chain: dict[str, Any], grams: frozenset[tuple[str, ...]]) -> bool:
    """Whether the chain's final text repeats a few-shot example (COPY_WORDS words not in its prompt or initial)."""
    return cut_few_shot_copy(chain["final"], grams, word_ngrams(chain["prompt"] + "\n" + chain["initial"]))[1]


def sft_skip_reason(chain: dict[str, Any], grams: frozenset[tuple[str, ...]] = frozenset()) -> str | None:
    if not chain["final"].strip():
        return "empty final"
    return "few-shot text" if copies_few_shot(chain, grams) else None


def pair_skip_reason(chain: dict[str, Any], grams: frozenset[tuple[str, ...]] = frozenset()) -> str | None:
    """Why a chain makes no preference pair: an empty side, no change, the judge not preferring the final
    (`p_final_better` <= 0.5), or copied few-shot text; None when it makes one."""
    final, initial = chain["final"].strip(), chain["initial"].strip()
    if not final or not initial:
        return "empty response"
    if final == initial:
        return "final equals initial"
    if chain.get("p_final_better") is not None and chain["p_final_better"] <= 0.5:
        return "judge did not prefer the final"
    return "few-shot text" if copies_few_shot(chain, grams) else None


def sft_records(chains: list[dict[str, Any]], grams: frozenset[tuple[str, ...]] = frozenset()) -> list[dict[str, str]]:
    """TRL prompt-completion records: the prompt and the chain's final revision (empty finals, and finals that
    copy few-shot text, left out)."""
    return [{"id": c["id"], "prompt": c["prompt"], "completion": c["final"]} for c in chains
            if sft_skip_reason(c, grams) is None]


def preference_records(chains: list[dict[str, Any]], grams: frozenset[tuple[str, ...]] = frozenset()) -> list[dict[str, Any]]:
    """TRL preference records: the final revision `chosen` over the initial response `rejected`.

    Chains whose final equals the initial response, or with an empty side, make no pair; judged chains (with
    `p_final_better`) make one only when the judge preferred the final, and the record keeps that p.
    """
    return [{"id": c["id"], "prompt": c["prompt"], "chosen": c["final"], "rejected": c["initial"],
             **({"p_final_better": c["p_final_better"]} if c.get("p_final_better") is not None else {})}
            for c in chains if pair_skip_reason(c, grams) is None]


def export_chains(out: str | Path, kinds: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Write each export of the chains in `out` (sft, pairs) beside it; returns {kind: {path, records}}."""
    unknown = sorted(set(kinds) - set(EXPORTS))
    if unknown:
        raise RlaifError(f"Unknown export(s) {', '.join(unknown)}: use {' or '.join(EXPORTS)}.")
    chains = [row for row in read_jsonl(out) if not is_skip_row(row)]  # too-long prompts made no chain
    grams = few_shot_ngrams(all_few_shot())
    written: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(kinds):
        rows = sft_records(chains, grams) if kind == "sft" else preference_records(chains, grams)
        reason = sft_skip_reason if kind == "sft" else pair_skip_reason
        why = Counter(r for r in (reason(c, grams) for c in chains) if r)
        path = export_path(out, kind)
        with RecordWriter(path, overwrite=True) as writer:
            writer.write_all(rows)
        info = {"path": str(path), "records": len(rows), "skipped": len(chains) - len(rows),
                "skipped_by_reason": dict(sorted(why.items()))}
        write_json(meta_path(path), {"export": kind, "source": str(out), **info, "rlaif_version": __version__})
        written[kind] = info
    return written
