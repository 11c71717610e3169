"""Deterministic synthetic PRVR datasets in exactly the release layout, with planted partial relevance.

Each video is background frames with a few events (contiguous segments). An event has a *topic* (shared
across videos) and an *attribute*; frames inside it carry both prototypes plus noise. Each query describes
one event: its tokens mix the topic's and the attribute's text prototypes with generic word vectors and
noise. Visual and text prototypes are unrelated random vectors, so a model must learn the projections, as
with I3D + RoBERTa. Topic alone is ambiguous across many videos and the attribute is weak and noisy, so a
trained model lands far above chance and well below perfect.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from prvr.data.layout import DatasetLayout
from prvr.data.writer import DatasetWriter, write_bigfile
from prvr.errors import PrvrError
from prvr.io import check_free_space, check_writable
from prvr.synth.clock import FRAME_STEP, frame_clock


@dataclass(frozen=True)
class SynthPreset:
    collection: str
    visual_dim: int
    text_dim: int
    videos: tuple[int, int, int]  # train, val, test
    frames: tuple[int, int] = (8, 160)  # min, max frames per video
    events: tuple[int, int] = (1, 4)
    tokens: tuple[int, int] = (6, 24)
    topics: int = 40
    attributes: int = 12
    event_strength: float = 0.8
    attribute_strength: float = 0.4
    frame_noise: float = 1.5
    token_noise: float = 1.5
    frame_step: float = FRAME_STEP  # seconds between two frames
    seed: int = 0


PRESETS: dict[str, SynthPreset] = {
    "tiny": SynthPreset("charades", 48, 40, (48, 16, 16), frames=(6, 150), topics=10, attributes=4,
                        event_strength=1.0, attribute_strength=0.6, frame_noise=1.0, token_noise=1.0),
    "charades-small": SynthPreset("charades", 1024, 1024, (320, 160, 160)),
    # the training-curve comparison with the original (bench/train_curve.py): 400 train / 100 val videos
    "charades-curve": SynthPreset("charades", 1024, 1024, (400, 100, 100)),
    "charades": SynthPreset("charades", 1024, 1024, (5338, 1334, 1334), topics=160, attributes=24),
    "activitynet-small": SynthPreset("activitynet", 1024, 1024, (320, 80, 80), frames=(20, 300)),
    "activitynet": SynthPreset("activitynet", 1024, 1024, (9043, 4430, 4430), frames=(20, 300), topics=200,
                               attributes=24),
    "tvr-small": SynthPreset("tvr", 3072, 768, (320, 80, 80), frames=(20, 150)),
    "tvr": SynthPreset("tvr", 3072, 768, (17435, 2179, 2179), frames=(20, 150), topics=300, attributes=24),
}

VERBS = ["opening", "closing", "holding", "washing", "eating", "drinking from", "putting down", "taking",
         "throwing", "tidying", "looking at", "sitting on", "standing on", "laughing at", "fixing", "cooking with",
         "pouring", "carrying", "cleaning", "watching"]
OBJECTS = ["a door", "a cup", "a book", "a laptop", "a phone", "a blanket", "a pillow", "a sandwich", "a box",
           "a broom", "a towel", "a mirror", "a chair", "a table", "a bag", "a dish", "a shoe", "a window",
           "a picture", "the stove"]
ATTRIBUTES = ["slowly", "quickly", "in the kitchen", "in the bedroom", "near the window", "while smiling",
              "at night", "twice", "carefully", "with both hands", "in the hallway", "while talking",
              "in the garage", "on the sofa", "in the morning", "without looking", "again", "nervously",
              "in the dark", "happily", "at the desk", "in silence", "while standing", "in a hurry"]


def topic_phrase(i: int) -> str:
    return f"{VERBS[i % len(VERBS)]} {OBJECTS[(i // len(VERBS) + i) % len(OBJECTS)]}"


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_synthetic(root: str | Path, preset: str | SynthPreset, seed: int | None = None, bigfile: bool = False,
                    scale: float = 1.0) -> DatasetLayout:
    """Write a synthetic dataset under ROOT/<collection>/ in the standard layout; returns its layout.

    `scale` multiplies the number of videos per split (at least 2 each); `bigfile=True` also writes the BigFile form.
    """
    if not 0 < scale <= 1000:  # also refuses NaN
        raise PrvrError(f"scale={scale}: expected 0 < scale <= 1000")
    if preset == "everyday":  # real language through a real text encoder (see prvr.synth.everyday)
        from prvr.synth.everyday import VIDEOS, write_everyday

        videos = tuple(max(2, round(n * scale)) for n in VIDEOS)
        return write_everyday(root, videos=videos, seed=0 if seed is None else seed)
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise PrvrError(f"unknown synthetic preset {preset!r}; available: {', '.join([*PRESETS, 'everyday'])}")
        preset = PRESETS[preset]
    if seed is not None:
        preset = replace(preset, seed=seed)
    if scale != 1.0:
        preset = replace(preset, videos=tuple(max(2, round(n * scale)) for n in preset.videos))
    p = preset
    check_writable(root, "dataset root", directory=True)
    check_free_space(root, estimated_bytes(p, bigfile), f"synthetic preset {p.collection} x{scale:g}")
    rng = np.random.default_rng(p.seed)
    scale_v = np.sqrt(p.visual_dim)  # unit prototypes scaled to per-dimension magnitude ~1
    scale_t = np.sqrt(p.text_dim)
    topic_v, topic_t = _unit_rows(rng, p.topics, p.visual_dim) * scale_v, _unit_rows(rng, p.topics, p.text_dim) * scale_t
    attr_v, attr_t = (_unit_rows(rng, p.attributes, p.visual_dim) * scale_v,
                      _unit_rows(rng, p.attributes, p.text_dim) * scale_t)
    words = _unit_rows(rng, 64, p.text_dim) * scale_t
    scenes = _unit_rows(rng, 8, p.visual_dim) * scale_v

    moments: dict[str, dict] = {}
    with DatasetWriter(root, p.collection) as out:
        counter = 0
        for split, n_videos in zip(("train", "val", "test"), p.videos, strict=True):
            for _ in range(n_videos):
                vid = f"{p.collection[:3]}{counter:06d}"
                counter += 1
                n = int(rng.integers(p.frames[0], p.frames[1] + 1))
                scene = scenes[rng.integers(len(scenes))]
                frames = 0.5 * scene + p.frame_noise * rng.standard_normal((n, p.visual_dim)).astype(np.float32)
                n_events = int(rng.integers(p.events[0], p.events[1] + 1))
                bounds = np.sort(rng.choice(np.arange(1, n), size=min(2 * n_events, n - 1), replace=False))
                spans = [(int(bounds[i]), int(bounds[i + 1])) for i in range(0, len(bounds) - 1, 2)]
                if not spans:
                    spans = [(0, n)]
                events = []
                for k, (s, e) in enumerate(spans):
                    topic, attr = int(rng.integers(p.topics)), int(rng.integers(p.attributes))
                    frames[s:e] += p.event_strength * topic_v[topic] + p.attribute_strength * attr_v[attr]
                    n_tok = int(rng.integers(p.tokens[0], p.tokens[1] + 1))
                    mix = rng.random((n_tok, 1)).astype(np.float32)
                    tokens = (mix * topic_t[topic] + (1 - mix) * 0.5 * attr_t[attr]
                              + words[rng.integers(len(words), size=n_tok)]
                              + p.token_noise * rng.standard_normal((n_tok, p.text_dim)).astype(np.float32))
                    cap_id = f"{vid}#enc#{k}"
                    text = f"someone {topic_phrase(topic)} {ATTRIBUTES[attr % len(ATTRIBUTES)]}"
                    out.add_caption(split, cap_id, text, tokens)
                    events.append({"cap_id": cap_id, "topic": topic, "attribute": attr, "frames": [s, e],
                                   "seconds": [s * p.frame_step, e * p.frame_step]})
                out.add_video(vid, frames, frame_clock(n, p.frame_step))
                moments[vid] = {"n_frames": n, "events": events}
        out.add_json("synthetic.json", {"preset": asdict(p), "moments": moments})
    if bigfile:
        write_bigfile(out.layout)
    return out.layout


def estimated_bytes(p: SynthPreset, bigfile: bool = False) -> int:
    """About what a preset writes: float32 frames and tokens (HDF5 overhead aside), twice the frames with BigFile."""
    videos = sum(p.videos)
    frames = videos * (p.frames[0] + p.frames[1]) / 2 * p.visual_dim * 4
    tokens = videos * (p.events[0] + p.events[1]) / 2 * (p.tokens[0] + p.tokens[1]) / 2 * p.text_dim * 4
    return int(frames * (2 if bigfile else 1) + tokens)


def synthetic_info(layout: DatasetLayout) -> dict:
    path = layout.base / "synthetic.json"
    return json.loads(path.read_text()) if path.exists() else {}
