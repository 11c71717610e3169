"""Range checks on every config field and every CLI option, with the allowed range in the message; and the edges
of each numeric range train and score without an error or a non-finite number."""

from __future__ import annotations

import dataclasses
import inspect
import typing

import pytest
import torch

from prvr.cli.common import app
from prvr.config import DataConfig, TrainConfig, describe_range
from prvr.data.datasets import Batch
from prvr.errors import ConfigError
from prvr.models import build_loss, build_model, get_entry, model_names
from prvr.models.base import TrainStep
from prvr.models.presets import default_config, resolve
from tests.conftest import tiny_model_config

SECTIONS = [TrainConfig, DataConfig] + [c for m in model_names() for c in (get_entry(m).config, get_entry(m).loss_config)]


def _fields(cls):
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


@pytest.mark.parametrize("cls", SECTIONS, ids=lambda c: c.__name__)
def test_every_config_field_has_a_range(cls):
    for f, hint in _fields(cls):
        if hint is bool:
            continue  # true/false is its range
        assert describe_range(f), f"{cls.__name__}.{f.name} declares no range, choices or pattern"


def test_out_of_range_message_names_the_range():
    cfg = default_config()
    for key, value, text in [("train.batch_videos", 0, "1 <= x <= 100000"), ("model.input_drop", 1.5, "0.0 <= x <= 0.9"),
                             ("train.lr", -1.0, "0.0 <= x <= 1.0"), ("train.seed", 2**40, "0 <= x <= 4294967295"),
                             ("loss.textual_structure", "all", "one of both, qdl, qsp, none"),
                             ("data.visual_feature", "a/b", "plain folder name")]:
        with pytest.raises(ConfigError, match=f"{key}: expected .*{text.replace('.', '[.]')}.*got"):
            cfg.set(key, value)
    for overrides, text in [([("model.hidden_size", 30)], "multiple of n_heads"),
                            ([("model.map_size", 200)], "clip_pos_len >= map_size"),
                            ([("model.clip_scale_w", 0.0), ("model.frame_scale_w", 0.0)], "positive sum"),
                            ([("loss.diversity_alpha", 64.0), ("loss.diversity_margin", 1.0)], "expected <= 80")]:
        with pytest.raises(ConfigError, match=text):
            resolve(None, "charades", overrides=overrides)


def _value_at(f, key):
    m = f.metadata
    v = m[key]
    if key in ("gt", "lt") and isinstance(f.default, float):
        v = v + 1e-6 if key == "gt" else v - 1e-6
    elif key in ("gt", "lt"):
        v = v + 1 if key == "gt" else v - 1
    return int(v) if isinstance(f.default, int) and not isinstance(f.default, bool) else v


BIG = {"hidden_size": 64, "n_heads": 8, "visual_dim": 96, "text_dim": 96, "map_size": 64, "max_ctx_l": 256,
       "max_desc_l": 64, "clip_pos_len": 256, "num_registers": 16, "timesteps": 50, "num_diffusion_layers": 4,
       "attention_num": 12}  # sized-down upper edges (the declared maxima are memory, not arithmetic, limits)


def _edges():
    for cls in (get_entry("dreamprvr").config, get_entry("dreamprvr").loss_config):
        for f, hint in _fields(cls):
            for key in ("ge", "gt", "le", "lt"):
                if key in f.metadata and hint in (int, float):
                    yield cls, f, key


@pytest.mark.parametrize("cls,f,key", list(_edges()), ids=lambda x: getattr(x, "__name__", getattr(x, "name", x)))
def test_range_edges_train_and_score_finitely(cls, f, key):
    mc, lc = tiny_model_config(), get_entry("dreamprvr").loss_config()
    value = _value_at(f, key)
    if key in ("le", "lt") and f.name in BIG:
        value = BIG[f.name]
    target = mc if cls is type(mc) else lc
    setattr(target, f.name, value)
    # fields bounded together (`validate`): the partner takes a value that fits
    if f.name == "n_heads":
        mc.hidden_size = 8 * value
    if f.name == "hidden_size":
        mc.n_heads = 1 if value < 8 else 8
    if f.name == "map_size":
        mc.clip_pos_len = max(mc.clip_pos_len, value)
    if f.name == "clip_pos_len":
        mc.map_size = min(mc.map_size, value)
    if f.name == "diversity_alpha":
        lc.diversity_margin = min(lc.diversity_margin, 80 / value - 1)
    if f.name == "diversity_margin" and value > -1:
        lc.diversity_alpha = min(lc.diversity_alpha, 80 / (1 + value))
    for section in (mc, lc):
        section.validate("edge")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    B, N, F = 3, 5, min(7, mc.max_ctx_l)
    batch = Batch(clip=torch.randn(B, mc.map_size, mc.visual_dim, generator=g),
                  frames=torch.randn(B, F, mc.visual_dim, generator=g), frame_mask=torch.ones(B, F),
                  text=torch.randn(N, min(4, mc.max_desc_l), mc.text_dim, generator=g),
                  text_mask=torch.ones(N, min(4, mc.max_desc_l)), labels=torch.tensor([0, 0, 1, 2, 2]))
    model = build_model(mc).train()
    loss, terms = build_loss(lc, mc)(model.forward_train(batch), batch.labels, TrainStep(0, True))
    loss.backward()
    assert torch.isfinite(loss.detach()), (f.name, value, {k: float(v) for k, v in terms.items()})
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), (f.name, value)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model.score(model.encode_queries(batch), model.encode_videos(batch))).all()


def _commands():
    for info in app.registered_commands:
        yield info.name or info.callback.__name__, info.callback
    for group in app.registered_groups:
        for info in group.typer_instance.registered_commands:
            yield f"{group.name} {info.name or info.callback.__name__}", info.callback


@pytest.mark.parametrize("name,callback", list(_commands()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_numeric_cli_option_has_a_range(name, callback):
    for p in inspect.signature(callback).parameters.values():
        hint = typing.get_type_hints(callback, include_extras=True)[p.name]
        base, *extras = typing.get_args(hint) if typing.get_origin(hint) is typing.Annotated else (hint,)
        if base not in (int, float, int | None, float | None):
            continue
        opt = next(e for e in extras if hasattr(e, "min"))
        assert opt.min is not None and opt.max is not None, f"prvr {name} --{p.name.replace('_', '-')} has no range"


def test_cli_max_k_is_the_search_max_k():
    from prvr.cli.index import MAX_K
    from prvr.index import search

    assert MAX_K == search.MAX_K
