"""OpenAI-compatible inference servers (placeholder until the server back end lands)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlaif.errors import RlaifError


@dataclass
class ServerOptions:
    pass


class ServerFactory:
    name = "server"
    options_class = ServerOptions

    def accepts(self, spec: str) -> bool:
        return spec.startswith(("http://", "https://"))

    def load(self, spec: str, options: Any) -> Any:
        raise RlaifError("The server back end is not built yet.")


SERVER_FACTORY = ServerFactory()
