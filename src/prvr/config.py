"""Typed configs. Presets (activitynet, charades, tvr, ...) are YAML files shipped in `prvr/presets/`.

A run config = model + loss + train + data. Every field can be overridden from YAML or `section.key=value`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from prvr.errors import PrvrError


@dataclass
class ModelConfig:
    name: str = "dreamprvr"
    visual_dim: int = 1024  # Dv, raw visual feature size
    text_dim: int = 1024  # Dq, raw token feature size
    hidden_size: int = 384  # D
    n_heads: int = 4
    input_drop: float = 0.25
    drop: float = 0.25
    map_size: int = 32  # Kc clip cells
    max_ctx_l: int = 128  # max frame tokens
    max_desc_l: int = 30  # max query tokens
    clip_pos_len: int = 128  # rows of the clip position table (the original allocates 128, uses 32)
    attention_num: int = 8  # 1 plain + (attention_num - 1) Gaussian branches, widths 2^-2 ...
    sft_factor: float = 0.6  # fusion softmax temperature
    num_registers: int = 6  # K
    timesteps: int = 10  # T
    num_diffusion_layers: int = 2
    initializer_range: float = 0.02
    clip_scale_w: float = 0.6
    frame_scale_w: float = 0.4
    perturbation_scale: float = 0.1  # textual perturbation sampler
    # ablations of the paper (all True/faithful by default)
    use_registers: bool = True
    use_diffusion: bool = True  # False: registers = the condition C, no denoising loop
    video_centric_init: bool = True  # False: start from N(0, I) (zeros at inference), fresh noise in training
    sinusoidal_time_embedding: bool = False  # True: keep the sinusoidal table (the original overwrites it)


@dataclass
class LossConfig:
    # [clip NCE, frame NCE, query diversity, query similarity preservation, KL, diffusion]
    loss_factor: list[float] = field(default_factory=lambda: [0.02, 0.04, 0.003, 0.002, 1e-4, 1e-3])
    neg_factor: list[float] = field(default_factory=lambda: [0.2, 32.0, 1.0])  # margin, alpha, lambda
    deterministic_tau: float = 0.01
    margin: float = 0.2
    hard_pool_size: int = 20
    textual_structure: str = "both"  # both | qdl | qsp | none  (ablation "w/o textual structure learning")


@dataclass
class TrainConfig:
    lr: float = 2e-4
    lr_warmup_proportion: float = 0.01
    weight_decay: float = 0.01
    batch_videos: int = 128
    epochs: int = 100
    max_es_cnt: int = 10
    hard_negative_start_epoch: int = 20
    seed: int = 0
    eval_context_bsz: int = 100
    eval_query_bsz: int = 50
    num_workers: int = 0
    single_query_pass: bool = False  # the original encodes queries twice per step
    grad_clip: float = 1.0
    amp: bool = False  # bf16 autocast for training steps and their validation (opt-in; fp32 is the faithful default)
    recompute_videos: int = 16  # > 0: recompute branch activations in backward, so many videos at a time; 0: keep all


@dataclass
class DataConfig:
    collection: str = "charades"
    visual_feature: str | None = None  # default per collection
    root: str | None = None


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        cfg = cls()
        apply_dict(cfg, d)
        return cfg


def _coerce(section: Any, key: str, value: Any, where: str) -> Any:
    f = {f.name: f for f in dataclasses.fields(section)}.get(key)
    if f is None:
        raise PrvrError(f"{where}: unknown config key {type(section).__name__}.{key}")
    current = getattr(section, key)
    if isinstance(value, str) and not isinstance(current, str):
        value = yaml.safe_load(value)
    if isinstance(current, float) and isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
        try:
            value = float(value)
        except ValueError:
            raise PrvrError(f"{where}: {key} expects a number, got {value!r}") from None
    if isinstance(current, float) and not isinstance(value, (int, float)) or isinstance(value, bool) and not isinstance(current, bool):
        raise PrvrError(f"{where}: {key} expects {type(current).__name__}, got {value!r}")
    if isinstance(current, bool) and not isinstance(value, bool):
        raise PrvrError(f"{where}: {key} expects true/false, got {value!r}")
    if isinstance(current, float) and isinstance(value, int):
        value = float(value)
    if isinstance(current, int) and not isinstance(current, bool) and not isinstance(value, int):
        raise PrvrError(f"{where}: {key} expects an integer, got {value!r}")
    if isinstance(current, list):
        if not isinstance(value, list):
            raise PrvrError(f"{where}: {key} expects a list, got {value!r}")
        value = [float(v) for v in value]
    return value


def apply_dict(cfg: RunConfig, d: dict[str, Any], where: str = "config") -> RunConfig:
    for sec_name, values in (d or {}).items():
        section = getattr(cfg, sec_name, None)
        if section is None or not dataclasses.is_dataclass(section):
            raise PrvrError(f"{where}: unknown config section {sec_name!r}")
        if not isinstance(values, dict):
            raise PrvrError(f"{where}: section {sec_name!r} must be a mapping")
        for k, v in values.items():
            setattr(section, k, _coerce(section, k, v, where))
    return cfg


def apply_overrides(cfg: RunConfig, overrides: list[str]) -> RunConfig:
    """`section.key=value` strings (value parsed as YAML)."""
    for item in overrides:
        key, sep, value = item.partition("=")
        sec, dot, name = key.partition(".")
        if not sep or not dot:
            raise PrvrError(f"override {item!r}: expected section.key=value, e.g. train.lr=1e-4")
        apply_dict(cfg, {sec: {name: value}}, where=f"override {item!r}")
    return cfg


PRESET_ALIASES = {"act": "activitynet", "cha": "charades"}


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("prvr.presets").iterdir() if p.name.endswith(".yaml"))


def load_preset(name: str) -> RunConfig:
    name = PRESET_ALIASES.get(name, name)
    path = resources.files("prvr.presets") / f"{name}.yaml"
    if not path.is_file():
        raise PrvrError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return apply_dict(RunConfig(), yaml.safe_load(path.read_text()), where=f"preset {name}")


def load_yaml(path: str | Path, cfg: RunConfig | None = None) -> RunConfig:
    path = Path(path)
    if not path.exists():
        raise PrvrError(f"{path}: config file not found")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise PrvrError(f"{path}: not valid YAML ({e.__class__.__name__})") from None
    return apply_dict(cfg or RunConfig(), d or {}, where=str(path))


def resolve(preset: str | None = None, config_file: str | None = None, overrides: list[str] | None = None) -> RunConfig:
    cfg = load_preset(preset) if preset else RunConfig()
    if config_file:
        cfg = load_yaml(config_file, cfg)
    return apply_overrides(cfg, overrides or [])
