"""What a normal run prints: rlaif's own lines and progress bars, not the libraries' notices.

Without `--verbose`, `quiet_output` silences, before transformers or TRL are
imported: transformers' warnings and info (weight-loading bars and LOAD REPORT
tables, deprecation notes such as `past_key_values`, gradient-checkpointing
notes), TRL's "importing from trl.experimental" notice, the Trainer's raw metric
dicts (`{'loss': ...}` lines; the commands print their own summary), and a short
list of known library warnings (`QUIET_WARNINGS`: deprecations, pin_memory on CPU). rlaif's own warnings (low option mass, empty
checks) still print. `--verbose` shows everything and logs rlaif at INFO.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import sys
import warnings
from typing import Any

QUIET_ENV = {
    "TRL_EXPERIMENTAL_SILENCE": "1",  # TRL's notice on every `trl.experimental` import
    "TRANSFORMERS_VERBOSITY": "error",  # read once, when transformers is imported
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # "Loading weights" and download bars (rlaif's own bars stay)
}
# (message regex, category) of library warnings that say nothing a user of rlaif can act on.
QUIET_WARNINGS = (
    (r".*past_key_values.*", FutureWarning),
    (r".*[Gg]radient checkpointing.*", UserWarning),
    (r".*use_reentrant.*", UserWarning),
    (r".*trl\.experimental.*", Warning),
    (r".*`use_cache=True` is incompatible.*", UserWarning),
    (r".*`\w*gradient_checkpointing\w*` is deprecated.*", FutureWarning),  # transformers 5 renames it
    (r".*'pin_memory' argument is set as true but no accelerator.*", UserWarning),
    (r".*torch_dtype.*is deprecated.*", Warning),
)
TRAINER_CALLBACKS = "transformers.trainer_callback"


def quiet_output(verbose: bool) -> None:
    """Set up logging and library chatter for one CLI run (see the module docstring)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        return
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for message, category in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    if "transformers" in sys.modules:  # imported already (a test, a notebook): the environment came too late
        from transformers.utils import logging as hf_logging  # noqa: PLC0415

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    if TRAINER_CALLBACKS in sys.modules:
        quiet_trainer_logs(sys.modules[TRAINER_CALLBACKS])
    elif not any(isinstance(f, _PatchOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport())


def quiet_trainer_logs(module: Any) -> None:
    """The Trainer's metric dicts go: `ProgressCallback.on_log` writes each under the progress bar and
    `PrinterCallback.on_log` prints it (the Trainer picks the printer when `disable_tqdm` is set, which is its
    default while transformers logs only errors). The progress bar itself stays where a trainer asks for it."""

    def on_log(self: Any, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        return None

    on_log._rlaif_quiet = True  # type: ignore[attr-defined]
    for callback in (module.ProgressCallback, module.PrinterCallback):
        if not getattr(callback.on_log, "_rlaif_quiet", False):
            callback.on_log = on_log


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Applies `quiet_trainer_logs` when transformers' trainer callbacks are first imported (torch is heavy,
    so the CLI does not import them itself)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != TRAINER_CALLBACKS:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            execute(module)
            quiet_trainer_logs(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
