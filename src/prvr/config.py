"""Typed configs: dataclass sections, YAML files and `section.key=value` overrides, checked by type and range.

A run config is four sections: `model` (the registered model's own config class), `loss` (its loss config),
`train` and `data` (shared by every model). Which model and loss classes exist is the registry's business
(`prvr.models.presets` assembles run configs); this module holds the machinery and the shared sections.

Values are converted by the field's declared type, never by guessing from the text: a string field keeps the
text it was given (`--set data.root=/data/run: 2` stays that string), numbers and booleans are parsed as YAML
scalars, NaN/Inf are refused, and declared ranges (`field(..., ge=0)`) are checked with the range in the message.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Union

import yaml

from prvr.errors import ConfigError


def field(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, ge: float | None = None,
          gt: float | None = None, le: float | None = None, lt: float | None = None,
          choices: tuple | None = None, pattern: str | None = None) -> Any:
    """A dataclass field with an allowed range (`ge`/`gt`/`le`/`lt`), set of `choices` or, for text, a regular
    expression `pattern` the whole value must match; checked on every set."""
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, choices=choices, pattern=pattern).items()
            if v is not None}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# a plain folder name: no separators, not `.`/`..`, not hidden, printable
NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}"
PATTERN_HELP = {NAME_PATTERN: "a plain folder name (letters, digits, _ . + -; no path separators)",
                r"(?s).+": "a non-empty string"}


class Raw(str):
    """Text typed by a user (`--set key=value`): converted by the target field's type."""


# --------------------------------------------------------------------------------------------- conversion
_NULLS = {"null", "~", "none", "None"}


def _is_optional(hint) -> tuple[bool, Any]:
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return True, args[0]
    return False, hint


def _scalar(value: Raw) -> Any:
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return str(value)


def _convert(hint, value: Any, what: str) -> Any:
    optional, hint = _is_optional(hint)
    if value is None or (optional and isinstance(value, Raw) and value in _NULLS):
        if optional:
            return None
        raise ConfigError(f"{what}: expected {_name(hint)}, got null")
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        if isinstance(value, Raw):
            value = _scalar(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{what}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [_convert(item, v, f"{what}[{i}]") for i, v in enumerate(value)]
    if hint is str:
        if isinstance(value, str):
            return str(value)
        raise ConfigError(f"{what}: expected a string, got {value!r}")
    if isinstance(value, Raw):
        value = _scalar(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{what}: expected true/false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{what}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{what}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{what}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{what}: expected a finite number, got {value!r}")
        return float(value)
    return value


def _name(hint) -> str:
    return getattr(hint, "__name__", str(hint))


def describe_range(meta: Any) -> str:
    """The allowed values of a field, for messages and `prvr presets --ranges`: `0 <= x < 1`, `one of a, b`."""
    m = meta.metadata if isinstance(meta, dataclasses.Field) else meta
    if "choices" in m:
        return "one of " + ", ".join(map(str, m["choices"]))
    if "pattern" in m:
        return PATTERN_HELP.get(m["pattern"], "text matching " + m["pattern"])
    lo = f"{m['ge']} <= " if "ge" in m else f"{m['gt']} < " if "gt" in m else ""
    hi = f" <= {m['le']}" if "le" in m else f" < {m['lt']}" if "lt" in m else ""
    return f"{lo}x{hi}" if lo or hi else ""


def _check_range(f: dataclasses.Field, value: Any, what: str) -> None:
    m = f.metadata
    if not m or value is None:
        return
    values = value if isinstance(value, list) else [value]
    for v in values:
        if "choices" in m and v not in m["choices"]:
            raise ConfigError(f"{what}: expected one of {', '.join(map(str, m['choices']))}, got {v!r}")
        if "pattern" in m and not (isinstance(v, str) and re.fullmatch(m["pattern"], v)):
            raise ConfigError(f"{what}: expected {describe_range(m)}, got {v!r}")
        bounds = [(m.get("ge"), lambda a, b: a >= b), (m.get("gt"), lambda a, b: a > b),
                  (m.get("le"), lambda a, b: a <= b), (m.get("lt"), lambda a, b: a < b)]
        if any(bound is not None and not ok(v, bound) for bound, ok in bounds):
            raise ConfigError(f"{what}: expected {describe_range(m)}, got {v!r}")


def set_field(section: Any, key: str, value: Any, where: str) -> None:
    """Convert `value` by the declared type of `section.key`, check its range, and set it."""
    fields = {f.name: f for f in dataclasses.fields(section)}
    f = fields.get(key)
    what = f"{where}: {section.section}.{key}"
    if f is None:
        raise ConfigError(f"{where}: unknown config key {section.section}.{key} (known: {', '.join(fields)})")
    hint = typing.get_type_hints(type(section))[key]
    value = _convert(hint, value, what)
    _check_range(f, value, what)
    setattr(section, key, value)


def apply_mapping(section: Any, values: Any, where: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: section {section.section!r} must be a mapping, got {type(values).__name__}")
    for k, v in values.items():
        set_field(section, str(k), v, where)
    return section


def check_section(section: Any, where: str) -> None:
    """Re-check every field's range (after direct attribute assignment)."""
    for f in dataclasses.fields(section):
        _check_range(f, getattr(section, f.name), f"{where}: {section.section}.{f.name}")


# --------------------------------------------------------------------------------------------- sections
class Section:
    section: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, where: str) -> None:
        """Constraints between fields (ranges of single fields are declared with `field`)."""


@dataclass
class ModelConfig(Section):
    """What every model's config has: the input sizes the data pipeline needs. Models subclass it."""

    section: ClassVar[str] = "model"
    name: ClassVar[str] = ""  # the registered model name, set by each subclass

    visual_dim: int = field(1024, ge=1, le=65536)  # Dv, raw visual feature size
    text_dim: int = field(1024, ge=1, le=65536)  # Dq, raw token feature size
    map_size: int = field(32, ge=1, le=1024)  # Kc clip cells of the clip grid
    max_ctx_l: int = field(128, ge=1, le=16384)  # max frame tokens
    max_desc_l: int = field(30, ge=1, le=4096)  # max query tokens

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}


@dataclass
class LossConfig(Section):
    """Base of every model's loss config."""

    section: ClassVar[str] = "loss"


@dataclass
class TrainConfig(Section):
    section: ClassVar[str] = "train"

    lr: float = field(2e-4, ge=0.0, le=1.0)
    lr_warmup_proportion: float = field(0.01, ge=0.0, lt=1.0)
    weight_decay: float = field(0.01, ge=0.0, le=1.0)
    batch_videos: int = field(128, ge=1, le=100_000)
    epochs: int = field(100, ge=1, le=100_000)  # the schedule's length: t_total = steps per epoch x epochs
    max_epochs: int | None = field(None, ge=1, le=100_000)  # stop after so many epochs, schedule unchanged (None: run `epochs`)
    max_es_cnt: int = field(10, ge=0, le=100_000)
    hard_negative_start_epoch: int = field(20, ge=0, le=100_000)
    seed: int = field(0, ge=0, le=2**32 - 1)  # numpy's seed range
    eval_context_bsz: int = field(100, ge=1, le=100_000)
    eval_query_bsz: int = field(50, ge=1, le=100_000)
    num_workers: int = field(0, ge=0, le=256)
    grad_clip: float = field(1.0, ge=0.0, le=1e6)  # per-tensor clipping norm (0: off)
    amp: bool = False  # bf16 autocast for training steps and their validation (opt-in; fp32 is the faithful default)
    recompute_videos: int = field(16, ge=0, le=100_000)  # > 0: recompute branch activations in backward, so many videos at a time


@dataclass
class DataConfig(Section):
    section: ClassVar[str] = "data"

    collection: str = field("charades", pattern=NAME_PATTERN)  # a folder name under the data root
    visual_feature: str | None = field(None, pattern=NAME_PATTERN)  # a folder under FeatureData (default per collection)
    root: str | None = field(None, pattern=r"(?s).+")  # the dataset root (stored absolute by `prvr train`)


@dataclass
class RunConfig:
    model: ModelConfig
    loss: LossConfig
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)

    SECTIONS: ClassVar[tuple[str, ...]] = ("model", "loss", "train", "data")

    @property
    def model_name(self) -> str:
        return self.model.name

    def to_dict(self) -> dict[str, Any]:
        return {s: getattr(self, s).to_dict() for s in self.SECTIONS}

    def apply(self, d: Any, where: str = "config") -> RunConfig:
        """Set values from a nested mapping {section: {key: value}} (a YAML file's content)."""
        if d is None:
            return self
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: expected a mapping of sections ({', '.join(self.SECTIONS)}), "
                              f"got {type(d).__name__}")
        for sec_name, values in d.items():
            if sec_name not in self.SECTIONS:
                raise ConfigError(f"{where}: unknown config section {sec_name!r} (known: {', '.join(self.SECTIONS)})")
            if sec_name == "model" and isinstance(values, dict) and "name" in values:
                if values["name"] != self.model.name:
                    raise ConfigError(f"{where}: model.name is {values['name']!r}, but this config is for "
                                      f"{self.model.name!r} (choose the model with --model)")
                values = {k: v for k, v in values.items() if k != "name"}
            apply_mapping(getattr(self, sec_name), values, where)
        return self

    def set(self, path: str, value: Any, where: str | None = None) -> RunConfig:
        """Set one `section.key` (value typed, or `Raw` text to convert by the field's type)."""
        sec, dot, key = path.partition(".")
        where = where or f"{path}={value}"
        if not dot or not key:
            raise ConfigError(f"{where}: expected section.key, e.g. train.lr")
        if sec not in self.SECTIONS:
            raise ConfigError(f"{where}: unknown config section {sec!r} (known: {', '.join(self.SECTIONS)})")
        set_field(getattr(self, sec), key, value, where)
        return self

    def check(self, where: str = "config") -> RunConfig:
        """Check every field's range and each section's constraints."""
        for s in self.SECTIONS:
            section = getattr(self, s)
            check_section(section, where)
            section.validate(where)
        return self


Override = tuple[str, Any]


def parse_set(item: str) -> Override:
    """`section.key=value` -> (path, Raw(value))."""
    key, sep, value = item.partition("=")
    sec, dot, name = key.partition(".")
    if not sep or not dot or not sec or not name:
        raise ConfigError(f"override {item!r}: expected section.key=value, e.g. train.lr=1e-4")
    return key.strip(), Raw(value)


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"{path}: not valid YAML ({e.__class__.__name__})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None


def to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
