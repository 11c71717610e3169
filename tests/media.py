"""Tiny Hugging Face encoders and real small video files, made on the fly (nothing downloaded)."""

from pathlib import Path

import numpy as np
import pytest

WORDS = "a the person red blue ball dog runs jumps kitchen opens door someone cooking at stove".split()


def write_video(path: Path, seconds: float, fps: int = 10, size=(64, 48), color=(255, 0, 0), codec="libx264"):
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(int(seconds * fps)):
            img = np.zeros((size[1], size[0], 3), np.uint8)
            img[:] = color
            img[:, (i * 3) % size[0]] = 255  # a moving bar
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture(scope="session")
def tiny_encoders(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, CLIPVisionConfig, CLIPVisionModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("encoders")
    vision = root / "vision"
    CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                                     image_size=32, patch_size=8)).save_pretrained(vision)
    text = root / "text"
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(text)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=30, max_position_embeddings=64)).save_pretrained(text)
    return vision, text


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    write_video(d / "red_ball.mp4", 3.0, color=(200, 30, 30))
    write_video(d / "blue_door.mp4", 5.2, color=(30, 30, 200))
    write_video(d / "kitchen.avi", 2.0, color=(30, 200, 30), codec="mpeg4")  # another container and codec
    (d / "empty.mp4").write_bytes(b"")
    (d / "broken.mp4").write_bytes(b"\x00\x01 not a video at all" * 50)
    (d / "notes.txt").write_text("not a video")
    return d


@pytest.fixture(scope="session")
def own_index(video_dir, tiny_encoders, tmp_path_factory):
    """Videos extracted with the tiny encoders, a (random) model of that feature space, and its index."""
    from prvr.encode.extract import extract
    from prvr.index.build import build_index
    from prvr.models import build_model
    from prvr.models.checkpoint import save_checkpoint
    from prvr.models.presets import default_config

    vision, text = tiny_encoders
    root = tmp_path_factory.mktemp("served")
    extract(video_dir, root, "mine", f"hf:{vision}", f"hf:{text}", fps=2.0, progress=False)
    cfg = default_config()
    cfg.model.visual_dim, cfg.model.text_dim, cfg.model.hidden_size, cfg.model.num_registers = 32, 24, 32, 2
    cfg.data.collection = "mine"
    ckpt = root / "model.safetensors"
    save_checkpoint(ckpt, build_model(cfg.model), cfg)
    index = root / "index"
    from prvr.data.layout import DatasetLayout

    build_index(ckpt, DatasetLayout(root, "mine"), "all", index, progress=False)
    return index


def word_tokenizer(words=WORDS, special_tokens: bool = False):
    """A word-level fast tokenizer over `words` ([CLS] text [SEP] with special_tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if special_tokens:
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                           special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]"), len(vocab)


def save_image_text(kind: str, path: Path, seed: int = 0) -> Path:
    """A tiny randomly initialised CLIPModel or SiglipModel with its tokenizer, saved to `path`."""
    import torch
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    torch.manual_seed(seed)
    tok, n = word_tokenizer(special_tokens=True)
    text = dict(vocab_size=n, hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=16, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    if kind == "clip":
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=24))
    else:
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=vision))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_image_text(tmp_path_factory):
    """Tiny image-text checkpoints (image and text towers of one model) saved to disk: {"clip": DIR, "siglip": DIR}."""
    root = tmp_path_factory.mktemp("image-text")
    return {k: save_image_text(k, root / k) for k in ("clip", "siglip")}


@pytest.fixture(scope="session")
def ingested(video_dir, tiny_image_text, tmp_path_factory):
    """`video_dir` ingested with the tiny CLIP (2 fps): the index, and the report."""
    from prvr.index.ingest import ingest

    index = tmp_path_factory.mktemp("ingested") / "index"
    rep = ingest(video_dir, index, f"hf:{tiny_image_text['clip']}", fps=2.0, workers=1, progress=False)
    return index, rep
