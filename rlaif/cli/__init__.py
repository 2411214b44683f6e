"""The `rlaif` command: a click group; each command lives in its own module here."""

from __future__ import annotations

import logging

import click

from rlaif import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="rlaif")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def cli(verbose: bool) -> None:
    """RLAIF and Constitutional AI: AI-feedback labels, reward models and RL."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


# Commands register themselves below, one import a command module.
from rlaif.cli.label import label  # noqa: E402

cli.add_command(label)
from rlaif.cli.align import align  # noqa: E402

cli.add_command(align)
from rlaif.cli.ppo import ppo  # noqa: E402

cli.add_command(ppo)
from rlaif.cli.train_rm import train_rm  # noqa: E402

cli.add_command(train_rm)
from rlaif.cli.score import score  # noqa: E402

cli.add_command(score)
from rlaif.cli.generate import generate  # noqa: E402

cli.add_command(generate)
from rlaif.cli.revise import revise  # noqa: E402

cli.add_command(revise)
