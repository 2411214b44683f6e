"""The one place RL trainers get their reward from: a reward model, d-RLAIF, or `module:function`.

Every reward here has TRL's reward-function signature,
`reward(prompts, completions, **kwargs) -> list[float]`, so the same object plugs
into GRPO and RLOO as is and into PPO through `rlaif.rl.rewards.TextRewardModel`.

- `--reward-model DIR`: a one-output sequence classifier with any tokenizer
  (`RewardModelFunction`), reading text exactly as `rlaif train-rm` trained it.
- `--d-rlaif`: the feedback LLM's 1-10 rating mapped to [-1, 1] (`rlaif.drlaif.DRLAIFScorer`).
- `--reward-fn pkg.mod:func`: any callable with TRL's signature, imported by name.

rlaif's own rewards (reward model, d-RLAIF) read plain text: the user's prompt
as written in the prompt file (the `prompt_text` column the trainers add) and
the completion's text, whether TRL holds them as strings or as chat messages.
A `--reward-fn` gets TRL's arguments untouched (strings for plain prompts,
message lists for chat prompts, plus `prompt_text` and TRL's extras). Every
reward's output is checked: one finite number per completion.
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rlaif.errors import RlaifError
from rlaif.text import as_text

RewardFn = Callable[..., Sequence[float]]
PROMPT_TEXT = "prompt_text"  # the data-set column holding each prompt as the user wrote it


@dataclass(kw_only=True)
class RewardSettings:
    """Where an RL run's reward comes from; RL configs inherit these fields (and their CLI flags)."""

    reward_model: str | None = field(
        default=None, metadata={"help": "Sequence-classification reward model directory (num_labels=1); any tokenizer."}
    )
    d_rlaif: bool = field(default=False, metadata={"help": "Reward = the feedback LLM's 1-10 score mapped to [-1, 1]."})
    reward_fn: str | None = field(
        default=None,
        metadata={"help": "A reward function MODULE:FUNCTION with TRL's signature "
                          "(prompts, completions, **kwargs) -> list[float]; the current directory is importable."},
    )
    feedback_model: str = field(default="default", metadata={"help": "Feedback LLM for --d-rlaif (a model or server URL)."})
    constitution: str = field(default="cai-harmless", metadata={"help": "Constitution for --d-rlaif."})
    principle: str | None = field(
        default=None, metadata={"help": "One principle id for --d-rlaif (default: the constitution's first)."}
    )
    feedback_backend_option: tuple[str, ...] = field(
        default=(), metadata={"help": "Back-end option of the --d-rlaif feedback model, KEY=VALUE (repeatable)."}
    )

    def check_reward(self) -> None:
        """Exactly one reward source, and no d-RLAIF settings without --d-rlaif."""
        chosen = [name for name, on in (("--reward-model", self.reward_model), ("--d-rlaif", self.d_rlaif),
                                        ("--reward-fn", self.reward_fn)) if on]
        if len(chosen) != 1:
            given = f" (got {' and '.join(chosen)})" if chosen else ""
            raise RlaifError(f"Give exactly one reward: --reward-model DIR, --d-rlaif or --reward-fn MODULE:FUNCTION{given}.")
        if self.feedback_backend_option and not self.d_rlaif:
            raise RlaifError("--feedback-backend-option applies to --d-rlaif only; drop it or add --d-rlaif.")


def load_reward(settings: RewardSettings) -> RewardFn:
    """The reward the settings name, wrapped so its output is checked (and rlaif's rewards read plain text)."""
    settings.check_reward()
    if settings.reward_fn:
        function = import_reward_fn(settings.reward_fn)
        return CheckedReward(function, name=_callable_name(function), plain_text=False)
    if settings.reward_model:
        if not Path(settings.reward_model).is_dir():
            raise RlaifError(f"--reward-model {settings.reward_model} is not a directory; give the folder "
                             "`rlaif train-rm --out` wrote.")
        from rlaif.rl.rewards import RewardModelFunction  # noqa: PLC0415 (torch)

        return CheckedReward(RewardModelFunction(settings.reward_model), name="reward_model")
    return CheckedReward(build_drlaif_scorer(settings), name="drlaif")


def build_drlaif_scorer(settings: RewardSettings) -> Any:
    """The d-RLAIF scorer for `settings` (the feedback model's back-end options passed through)."""
    from rlaif.backends import parse_option_items  # noqa: PLC0415
    from rlaif.drlaif import DRLAIFScorer, ScoreConfig  # noqa: PLC0415 (loads the engine)

    kwargs: dict[str, Any] = {"model": settings.feedback_model, "constitution": settings.constitution,
                              "principle": (settings.principle,) if settings.principle else ()}
    options = parse_option_items(list(settings.feedback_backend_option))
    if "backend_options" in {f.name for f in fields(ScoreConfig)}:
        kwargs["backend_options"] = options
    elif options:
        raise RlaifError("This rlaif's d-RLAIF scorer takes no back-end options; drop --feedback-backend-option.")
    return DRLAIFScorer(ScoreConfig(**kwargs))


def import_reward_fn(spec: str) -> Callable[..., Any]:
    """`pkg.mod:func` (or `pkg.mod:obj.method`) imported and checked to take (prompts, completions, ...)."""
    module_name, sep, attr = str(spec).partition(":")
    if not sep or not module_name.strip() or not attr.strip():
        raise RlaifError(f"--reward-fn {spec!r} must be MODULE:FUNCTION, e.g. my_rewards:length_reward.")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # a module beside the user's files, as `python -m` would find it
    try:
        module = importlib.import_module(module_name.strip())
    except ModuleNotFoundError as err:
        if err.name and module_name.strip().startswith(err.name):
            raise RlaifError(f"--reward-fn {spec}: no module named {module_name!r}; put it in the current directory "
                             "or on PYTHONPATH, or install its package.") from err
        raise RlaifError(f"--reward-fn {spec}: importing {module_name!r} failed: {err}.") from err
    except Exception as err:  # noqa: BLE001 (the user's module failed while importing: say so in one line)
        raise RlaifError(f"--reward-fn {spec}: importing {module_name!r} failed: {type(err).__name__}: {err}.") from err
    target: Any = module
    for part in attr.strip().split("."):
        if not hasattr(target, part):
            raise RlaifError(f"--reward-fn {spec}: {module_name!r} has no {attr!r}; check the name after the colon.")
        target = getattr(target, part)
    _check_reward_signature(spec, target)
    return target


def _check_reward_signature(spec: str, target: Any) -> None:
    if inspect.isclass(target) or not callable(target):
        kind = "a class" if inspect.isclass(target) else f"of type {type(target).__name__}"
        raise RlaifError(f"--reward-fn {spec} is {kind}, not a function; point it at a function "
                         "(prompts, completions, **kwargs) -> list[float].")
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return  # a builtin without a signature: trust it, its output is still checked
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not any(p.kind == p.VAR_KEYWORD for p in params) and not {"prompts", "completions"} <= names:
        raise RlaifError(f"--reward-fn {spec} must accept prompts= and completions= (TRL's reward signature "
                         "(prompts, completions, **kwargs) -> list[float]).")


class CheckedReward:
    """A reward function whose scores are checked (one finite float per completion), with a name for TRL's logs.

    `plain_text`: hand the wrapped function the prompt as the user wrote it (`prompt_text`, when the
    trainer passes it) and completions as text, whatever form TRL keeps them in.
    """

    def __init__(self, function: RewardFn, name: str, plain_text: bool = True):
        self.function = function
        self.plain_text = plain_text
        self.__name__ = name  # TRL names each reward's metrics `rewards/<name>/mean`

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        if self.plain_text:
            texts = kwargs.get(PROMPT_TEXT) or prompts
            prompts = [as_text(p, "a prompt") for p in texts]
            completions = [as_text(c, "a completion") for c in completions]
            scores = self.function(prompts=prompts, completions=completions)
        else:
            scores = self.function(prompts=prompts, completions=completions, **kwargs)
        return check_scores(scores, len(completions), self.__name__)


def check_scores(scores: Any, expected: int, name: str = "reward function") -> list[float]:
    """The reward function's output as floats: one finite number per completion."""
    if hasattr(scores, "detach"):  # a torch tensor
        scores = scores.detach().flatten().tolist()
    try:
        values = [float(s) for s in scores]
    except (TypeError, ValueError) as err:
        raise RlaifError(f"The reward {name} returned {_short(scores)}; it must return a list of floats.") from err
    if len(values) != expected:
        raise RlaifError(f"The reward {name} returned {len(values)} scores for {expected} completions; "
                         "return one per completion.")
    if not all(math.isfinite(v) for v in values):
        raise RlaifError(f"The reward {name} returned a NaN or infinite score ({_short(values)}); fix the scorer.")
    return values


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _callable_name(function: Any) -> str:
    return getattr(function, "__name__", type(function).__name__)
