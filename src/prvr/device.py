"""Device selection (`auto` picks cuda, then mps, then cpu) and the opt-in mixed precision."""

from __future__ import annotations

import torch

from prvr.errors import PrvrError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise PrvrError(f"--device {name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PrvrError(f"--device {name}: CUDA is not available on this machine")
    return dev


def bf16_autocast(device: torch.device | str, enabled: bool) -> torch.autocast:
    """The project's mixed precision (`--amp`): bf16 autocast on the device's type; a no-op when not enabled."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)
