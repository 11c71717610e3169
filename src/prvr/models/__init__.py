from prvr.models.registry import build_model, model_names, register

__all__ = ["build_model", "model_names", "register"]
