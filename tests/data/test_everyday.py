import json

import numpy as np

from prvr.data.check import check_dataset
from prvr.data.features import open_query_features
from prvr.encode.encoders import load_text_encoder
from prvr.index.build import build_index
from prvr.index.search import Retriever
from prvr.models import build_model
from prvr.models.checkpoint import save_checkpoint
from prvr.models.presets import default_config
from prvr.synth.everyday import ACTIVITIES, write_everyday


def test_everyday_corpus_and_free_text_search(tmp_path):
    layout = write_everyday(tmp_path / "a", videos=(6, 3, 4))
    rep = check_dataset(layout)
    assert rep.ok, rep.problems
    assert (rep.visual_dim, rep.text_dim) == (512, 384)
    assert json.loads((layout.text_dir / "text_encoder.json").read_text()) == {"kind": "minilm"}
    assert len(ACTIVITIES) >= 200 and len(set(ACTIVITIES)) == len(ACTIVITIES)
    again = write_everyday(tmp_path / "b", videos=(6, 3, 4))
    assert layout.caption_file("test").read_text() == again.caption_file("test").read_text()
    # query tokens are real MiniLM token features: the stored features of a caption are the encoder's output
    q = open_query_features(layout)
    enc = load_text_encoder("minilm")
    lines = [ln.split(" ", 1) for ln in layout.caption_file("train").read_text().splitlines()]
    for (cap_id, text), want in zip(lines, enc.encode([t for _, t in lines]), strict=True):
        got = q.get(cap_id)
        assert got.shape == want.shape and got.shape[1] == 384 and len(got) >= len(text.split())
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)  # measured: 0 (other batch composition)
    assert not np.allclose(q.get(lines[0][0])[1], q.get(lines[1][0])[1])  # different captions, different tokens
    # planted moments are recorded in frames and in seconds (0.5 s apart), inside the video
    info = json.loads((layout.base / "synthetic.json").read_text())["moments"]
    video_info = json.loads(layout.video_info_file.read_text())
    for vid, events in info.items():
        for e in events:
            (fa, fb), (sa, sb) = e["frames"], e["seconds"]
            assert (sa, sb) == (fa * 0.5, fb * 0.5) and sb <= video_info[vid]["duration"]

    cfg = default_config()
    cfg.model.visual_dim, cfg.model.text_dim, cfg.model.hidden_size, cfg.model.num_registers = 512, 384, 32, 2
    cfg.data.collection, cfg.data.visual_feature = "everyday", "projected"
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, build_model(cfg.model), cfg)
    build_index(ckpt, layout, "test", tmp_path / "index", progress=False)
    r = Retriever(tmp_path / "index")
    hits = r.search("someone cooking at the stove", 4)
    assert len(hits) == 4 and all(h.end > h.start for h in hits)
    # the free-text path encodes exactly like the stored caption features
    cap_id, text = layout.caption_file("test").read_text().split("\n")[0].split(" ", 1)
    np.testing.assert_allclose(r.encode_text(text), q.get(cap_id), atol=1e-5)
