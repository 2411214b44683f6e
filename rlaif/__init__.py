"""rlaif: AI feedback (RLAIF / Constitutional AI) preference labels, reward models and RL."""

__version__ = "0.1.0"

from rlaif.errors import RlaifError

__all__ = ["RlaifError", "__version__"]
