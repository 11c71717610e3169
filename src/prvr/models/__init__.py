"""Models: the contract (`base`), the registry, shared layers and losses, checkpoints, and one package per model.
Importing this package registers every built-in model."""

from prvr.models import dreamprvr, hlformer, holmes  # noqa: F401  (registers)
from prvr.models.registry import build_loss, build_model, get_entry, model_names, register

__all__ = ["build_loss", "build_model", "get_entry", "model_names", "register"]
