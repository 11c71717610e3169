"""Drawn shapes with captions, and a tiny CLIP trained on them: an image–text model whose scores separate images
the way a trained one's do, made in seconds on a CPU with nothing downloaded.

An image is a coloured shape at one of four places on a noisy textured background; its caption names the three
("red disc left"). `train_shapes_clip` trains a small CLIPModel contrastively on such pairs and saves it with a
word-level tokenizer, so `hf:DIR` loads it like any CLIP checkpoint. It stands in for CLIP/SigLIP weights where
they cannot be downloaded (bench/bf16_agreement.py, tests/encode/test_bf16.py); it is not a model for real video.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
           "cyan": (40, 200, 210), "magenta": (200, 50, 200), "white": (240, 240, 240), "orange": (240, 140, 30)}
SHAPES = ("square", "disc", "ring", "cross", "stripes")
PLACES = ("left", "right", "top", "bottom")
SIZE = 32  # image side in pixels (the tiny CLIP's image_size)


def random_combos(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) indices into COLOURS, SHAPES, PLACES."""
    return np.stack([rng.integers(0, len(COLOURS), n), rng.integers(0, len(SHAPES), n),
                     rng.integers(0, len(PLACES), n)], axis=1)


def captions(combos: np.ndarray) -> list[str]:
    names = list(COLOURS)
    return [f"{names[c]} {SHAPES[s]} {PLACES[p]}" for c, s, p in combos]


def _masks(size: int) -> np.ndarray:
    """(shapes, places, size, size) boolean masks of each shape drawn at each place."""
    yy, xx = np.mgrid[:size, :size] / size
    centres = {"left": (0.5, 0.27), "right": (0.5, 0.73), "top": (0.27, 0.5), "bottom": (0.73, 0.5)}
    out = np.zeros((len(SHAPES), len(PLACES), size, size), bool)
    for j, place in enumerate(PLACES):
        dy, dx = yy - centres[place][0], xx - centres[place][1]
        r, box = np.hypot(dy, dx), np.maximum(abs(dy), abs(dx))
        out[:, j] = np.stack([box < 0.18, r < 0.2, (r > 0.11) & (r < 0.21),
                              (box < 0.2) & ((abs(dy) < 0.06) | (abs(dx) < 0.06)),
                              (box < 0.2) & ((xx * size // 3) % 2 == 0)])
    return out


def draw(combos: np.ndarray, rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """(n, 3) combos -> (n, size, size, 3) uint8 images: the shape in its colour (brightness jittered) on a grey
    background with smooth random texture and pixel noise."""
    n = len(combos)
    masks = _masks(size)[combos[:, 1], combos[:, 2]][..., None]  # (n, size, size, 1)
    colour = np.array(list(COLOURS.values()), np.float32)[combos[:, 0]] * rng.uniform(0.8, 1.1, (n, 1))
    coarse = rng.normal(0.0, 25.0, (n, 4, 4, 3)).repeat(size // 4, 1).repeat(size // 4, 2)
    background = 110.0 + coarse + rng.normal(0.0, 12.0, (n, size, size, 3))
    img = np.where(masks, colour[:, None, None, :] + rng.normal(0.0, 8.0, (n, size, size, 3)), background)
    return np.clip(img, 0, 255).astype(np.uint8)


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [*COLOURS, *SHAPES, *PLACES]
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2),
                                                                                               ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]")


def train_shapes_clip(path: str | Path, steps: int = 300, batch: int = 64, width: int = 64, dim: int = 256,
                      lr: float = 1e-2, seed: int = 0) -> dict:
    """Train a tiny CLIPModel (2 layers, width 64, 32x32 images) contrastively on drawn shapes and their captions;
    save it with its tokenizer and preprocessor config to `path`. Returns the training figures."""
    from transformers import CLIPConfig, CLIPModel

    from prvr.encode.encoders import CLIP_MEAN, CLIP_STD

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tok = _tokenizer()
    common = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2, num_attention_heads=4)
    text = dict(common, vocab_size=len(tok), max_position_embeddings=8, pad_token_id=0, bos_token_id=2,
                eos_token_id=3)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=dict(common, image_size=SIZE, patch_size=8),
                                 projection_dim=dim))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    losses = []
    model.train()
    for _ in range(steps):
        combos = random_combos(batch, rng)
        pixels = (torch.from_numpy(draw(combos, rng)).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        ids = tok(captions(combos), return_tensors="pt", padding=True)
        logits = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"], pixel_values=pixels)
        # identical captions in a batch are positives of each other: targets spread over them
        same = torch.from_numpy((combos[:, None] == combos[None]).all(-1)).float()
        target = same / same.sum(1, keepdim=True)
        loss = 0.5 * (torch.sum(-target * logits.logits_per_image.log_softmax(1), 1).mean()
                      + torch.sum(-target * logits.logits_per_text.log_softmax(1), 1).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval().save_pretrained(path)
    tok.save_pretrained(path)
    (Path(path) / "preprocessor_config.json").write_text(
        f'{{"image_mean": {list(CLIP_MEAN)}, "image_std": {list(CLIP_STD)}}}')
    return {"steps": steps, "batch": batch, "first_loss": losses[0], "last_loss": float(np.mean(losses[-20:])),
            "chance_loss": float(np.log(batch))}


def shapes_corpus(videos: int, per_video: int, queries: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Frames of `videos` pseudo-videos of `per_video` drawn images (consecutive; no colour-shape-place combination
    twice) and `queries` captions of random combinations."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in (len(COLOURS), len(SHAPES), len(PLACES))), indexing="ij"), -1)
    combos = grid.reshape(-1, 3)
    if videos * per_video > len(combos):
        raise ValueError(f"{videos} x {per_video} frames: more than the {len(combos)} combinations")
    frames = draw(combos[rng.permutation(len(combos))[:videos * per_video]], rng)
    return frames, captions(random_combos(queries, rng))
