"""The `rlaif` command: a click group; each command lives in its own module here."""

from __future__ import annotations

import re
from typing import Any

import click

from rlaif import __version__
from rlaif.cli.quiet import quiet_output


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 120})
@click.version_option(__version__, prog_name="rlaif")
@click.option("-v", "--verbose", is_flag=True,
              help="Show everything: rlaif's details and the libraries' own warnings, load reports and metric dicts.")
def cli(verbose: bool) -> None:
    """RLAIF and Constitutional AI: AI-feedback labels, reward models and RL.

    Every command takes --config FILE.yaml (keys are the flags without --) and --help.
    Options marked [required] must be given; [repeatable] ones may be given several times.
    """
    quiet_output(verbose)


# Commands register themselves below, one import a command module.
from rlaif.cli.label import label  # noqa: E402

cli.add_command(label)
from rlaif.cli.align import align  # noqa: E402

cli.add_command(align)
from rlaif.cli.ppo import ppo  # noqa: E402

cli.add_command(ppo)
from rlaif.cli.grpo import grpo  # noqa: E402

cli.add_command(grpo)
from rlaif.cli.train_rm import train_rm  # noqa: E402

cli.add_command(train_rm)
from rlaif.cli.score import score  # noqa: E402

cli.add_command(score)
from rlaif.cli.generate import generate  # noqa: E402

cli.add_command(generate)
from rlaif.cli.revise import revise  # noqa: E402

cli.add_command(revise)
from rlaif.cli.self_correct import self_correct  # noqa: E402

cli.add_command(self_correct)
from rlaif.cli.train_self_correct import train_self_correct  # noqa: E402

cli.add_command(train_self_correct)
from rlaif.cli.retry_data import retry_data  # noqa: E402

cli.add_command(retry_data)

# One line each in `rlaif --help` (click would cut the docstrings' first sentences at the terminal's width).
SHORT_HELP = {
    "label": "Soft AI-feedback labels for response pairs (or human prefs).",
    "align": "How far the AI labeller agrees with human labels.",
    "score": "d-RLAIF: rate single responses 1-10 with the feedback model.",
    "generate": "Sample responses from a policy and pair them for labelling.",
    "revise": "SL-CAI critique -> revision chains; SFT data and pairs.",
    "train-rm": "Train a reward model on AI labels or human pairs.",
    "ppo": "RL with TRL's PPO on a reward model or d-RLAIF (extra [ppo]).",
    "grpo": "RL with TRL's GRPO or RLOO on AI feedback.",
}
_REPEAT_NOTE = re.compile(r"\s*\(repeatable\)|;\s*repeatable(?=\.)|\s*Repeatable\.|\s*Repeat the flag for several\.")


def mark_repeatable(option: click.Option) -> None:
    """Show `[repeatable]` beside `[required]` and the default, for every command the same way."""
    option.help = _REPEAT_NOTE.sub("", option.help or "").replace("Repeatable; in --config", "In --config")
    extra_of = option.get_help_extra

    def get_help_extra(ctx: click.Context) -> Any:
        extra = extra_of(ctx)
        extra["required"] = "; ".join(filter(None, (extra.get("required"), "repeatable")))
        return extra

    option.get_help_extra = get_help_extra  # type: ignore[method-assign]


for _name, _command in cli.commands.items():
    _command.short_help = SHORT_HELP.get(_name, _command.short_help)
    for _param in _command.params:
        if isinstance(_param, click.Option) and _param.multiple:
            mark_repeatable(_param)
