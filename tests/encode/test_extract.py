import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from prvr.data.check import check_dataset
from prvr.data.layout import DatasetLayout
from prvr.encode.video import decode
from prvr.errors import DataError
from prvr.models import build_model
from prvr.models.checkpoint import save_checkpoint
from prvr.models.presets import default_config


def cli(*args):
    return subprocess.run([sys.executable, "-m", "prvr.cli", *map(str, args)], capture_output=True, text=True)


def test_decode_rate_and_times(video_dir):
    v = decode(video_dir / "blue_door.mp4", fps=2.0, size=(32, 24))
    assert v.frames.shape[1:] == (24, 32, 3) and v.frames.dtype == np.uint8
    assert len(v.frames) == pytest.approx(5.2 * 2, abs=1)
    assert all(b > a for a, b in zip(v.times, v.times[1:], strict=False))
    assert v.duration == pytest.approx(5.2, abs=0.2)


@pytest.mark.parametrize("name,expect", [("empty.mp4", "empty.mp4"), ("broken.mp4", "unreadable video")])
def test_decode_errors(video_dir, name, expect):
    with pytest.raises(DataError, match=expect):
        decode(video_dir / name)


@pytest.fixture(scope="module")
def extracted(video_dir, tiny_encoders, tmp_path_factory):
    vision, text = tiny_encoders
    root = tmp_path_factory.mktemp("own")
    caps = tmp_path_factory.mktemp("caps") / "captions.txt"
    caps.write_text("red_ball a red ball\nred_ball the ball jumps\nblue_door someone opens the blue door\n"
                    "kitchen someone cooking at the stove\n")
    r = cli("extract", video_dir, root, "--collection", "mine", "--frame-encoder", f"hf:{vision}",
            "--text-encoder", f"hf:{text}", "--captions", caps, "--fps", "2", "--quiet")
    return root, r


def test_extract_folder(extracted):
    root, r = extracted
    assert r.returncode == 2  # two bad files, reported at the end; the rest extracted
    assert "empty.mp4" in r.stderr and "broken.mp4" in r.stderr and "Traceback" not in r.stderr
    layout = DatasetLayout(root, "mine")
    with h5py.File(layout.feature_hdf5) as f:
        assert sorted(f) == ["blue_door", "kitchen", "red_ball"]
        assert f["blue_door"].shape == (pytest.approx(10.4, abs=1), 32)
    info = json.loads(layout.video_info_file.read_text())
    assert info["red_ball"]["duration"] == pytest.approx(3.0, abs=0.2)
    assert len(info["red_ball"]["frame_times"]) == 6
    assert layout.caption_file("test").read_text().splitlines()[1].startswith("red_ball#enc#1 ")
    rep = check_dataset(layout)
    assert rep.ok, rep.problems
    assert (rep.visual_dim, rep.text_dim) == (32, 24)


def test_index_and_free_text_search(extracted, tmp_path):
    root, _ = extracted
    cfg = default_config()
    cfg.model.visual_dim, cfg.model.text_dim, cfg.model.hidden_size, cfg.model.num_registers = 32, 24, 32, 2
    cfg.data.collection = "mine"
    ckpt = tmp_path / "m.safetensors"
    save_checkpoint(ckpt, build_model(cfg.model), cfg)
    index = tmp_path / "index"
    r = cli("index", "build", "--checkpoint", ckpt, "--data", root, "--split", "all", "--out", index, "--quiet")
    assert r.returncode == 0, r.stderr
    r = cli("search", index, "someone cooking at the stove", "-k", "3", "--json")
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert sorted(h["video_id"] for h in hits) == ["blue_door", "kitchen", "red_ball"]
    for h in hits:
        assert 0 <= h["start"] < h["end"] <= 5.5 and h["frame_time"] is not None
    from prvr import Retriever

    rt = Retriever(index)
    assert rt.video("kitchen")["file"].endswith("kitchen.avi")
    assert [h.video_id for h in rt.search("a red ball", 3)] == [h.video_id for h in rt.search("a red ball", 3)]
    for args, expect in [([index, "   "], "empty query"), ([index, "x" * 1001], "at most 1000"),
                         ([index, "ok", "-k", "1001"], "1 <= x <= 1000"), ([index], "either a free-text query")]:
        r = cli("search", *args)
        assert r.returncode == 2 and expect in r.stderr and "Traceback" not in r.stderr


def test_bad_encoder_spec(video_dir, tmp_path):
    r = cli("extract", video_dir, tmp_path, "--collection", "x", "--frame-encoder", "hf:/nonexistent")
    assert r.returncode == 2 and "/nonexistent" in r.stderr and "Traceback" not in r.stderr


def test_truncated_video_is_reported_not_stretched(tiny_encoders, tmp_path):
    """A cut-off AVI must not become a few frames stretched over the duration its header declares: whatever part
    of a truncated file decodes either covers its declared duration or the file is reported (one line, exit 2)."""
    from tests.media import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "good.avi", 3.0, codec="mpeg4")
    whole = (videos / "good.avi").read_bytes()
    reported = 0
    for frac in (0.5, 0.7, 0.8, 0.9, 0.95):
        cut = tmp_path / f"cut{frac}.avi"
        cut.write_bytes(whole[:int(len(whole) * frac)])
        try:
            v = decode(cut, fps=2.0, size=(32, 24))
        except DataError as e:
            assert str(e).startswith(str(cut)) and "\n" not in str(e)
            reported += "truncated" in str(e)
            continue
        assert v.times[-1] + 0.5 >= v.duration - 0.5, (frac, v.times, v.duration)  # samples every 0.5 s
    assert reported >= 1  # the header-says-longer case occurs among these cuts
    (videos / "cut.avi").write_bytes(whole[:int(len(whole) * 0.7)])  # 1 frame in a "2.1 s" video before the check
    vision, _ = tiny_encoders
    r = cli("extract", videos, tmp_path / "root", "--collection", "mine", "--frame-encoder", f"hf:{vision}", "--fps",
            "2", "--quiet")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cut.avi: truncated or damaged video" in r.stderr and "good.avi" not in r.stderr
    info = json.loads(DatasetLayout(tmp_path / "root", "mine").video_info_file.read_text())
    assert list(info) == ["good"] and info["good"]["duration"] == pytest.approx(3.0, abs=0.05)
