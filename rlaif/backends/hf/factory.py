"""The transformers back end's registry entry and options (`--backend-option KEY=VALUE`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlaif.errors import RlaifError

DTYPE_NAMES = ("float32", "bfloat16", "float16")


@dataclass
class HFOptions:
    """Options of the transformers back end."""

    dtype: str = field(default="float32", metadata={"help": "Weights dtype: float32, bfloat16 or float16."})
    device: str | None = field(default=None, metadata={"help": "torch device (default: cuda:LOCAL_RANK when a GPU is there, else cpu)."})
    batch_tokens: int = field(default=8192, metadata={"help": "Token budget of one forward batch (rows x longest)."})
    threads: int | None = field(default=None, metadata={"help": "CPU threads (default RLAIF_THREADS, else one a core, shared out among a launcher's processes on the machine)."})
    share_prefix: bool = field(default=True, metadata={"help": "Compute spans shared by several prompts once (prefix tree)."})

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, not {self.dtype!r}")
        if self.batch_tokens < 1:
            raise ValueError(f"batch_tokens must be at least 1, not {self.batch_tokens}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, not {self.threads}")


class HFFactory:
    name = "hf"
    options_class = HFOptions

    def accepts(self, spec: str) -> bool:
        return "://" not in spec

    def load(self, spec: str, options: HFOptions) -> Any:
        from rlaif.backends.hf import HFBackend  # noqa: PLC0415 (torch is heavy)

        if not spec:
            raise RlaifError("hf: needs a model: `hf:default`, `hf:ORG/NAME` or `hf:/path/to/model`.")
        return HFBackend.load(spec, dtype=options.dtype, device=options.device, batch_tokens=options.batch_tokens,
                              threads=options.threads, share_prefix=options.share_prefix)


HF_FACTORY = HFFactory()


def is_local_model_dir(spec: str) -> bool:
    return Path(spec).expanduser().is_dir()
