import h5py
import numpy as np
import pytest

from prvr.data.datasets import EvalVideos, SplitIndex
from prvr.data.features import BigFileStore, Hdf5Store, convert_bigfile, read_video2frames
from prvr.data.layout import DatasetLayout, read_captions, video_id_of
from prvr.errors import DataError


def test_default_feature_dirs(tmp_path):
    assert DatasetLayout(tmp_path, "activitynet").visual_feature == "i3d"
    assert DatasetLayout(tmp_path, "cha").feature_dir == tmp_path / "charades/FeatureData/i3d_rgb_lgi"
    assert DatasetLayout(tmp_path, "tvr").visual_feature == "i3d_resnet"
    assert DatasetLayout(tmp_path, "tvr", "mine").feature_dir.name == "mine"


def test_caption_parsing_and_order(tiny_data):
    layout = DatasetLayout(tiny_data, "charades")
    caps = read_captions(layout.caption_file("test"))
    idx = SplitIndex.from_layout(layout, "test")
    assert idx.query_ids == [c for c, _ in caps]
    assert idx.video_ids == list(dict.fromkeys(video_id_of(c) for c, _ in caps))
    assert video_id_of("friends_s01e03_seg02_clip_19#enc#0") == "friends_s01e03_seg02_clip_19"


def test_bigfile_equals_hdf5_and_convert(tiny_data, tmp_path):
    layout = DatasetLayout(tiny_data, "charades")
    h5 = Hdf5Store(layout.feature_hdf5, "video features")
    big = BigFileStore(layout.feature_dir, read_video2frames(layout.video2frames_file))
    for vid in list(h5.keys())[:10]:
        np.testing.assert_array_equal(h5.get(vid), big.get(vid))
    out = convert_bigfile(layout, tmp_path / "converted.hdf5", progress=False)
    with h5py.File(out, "r") as f:
        assert sorted(f.keys()) == sorted(h5.keys())
        vid = h5.keys()[3]
        np.testing.assert_array_equal(f[vid][...], h5.get(vid))
    assert not list(tmp_path.glob(".*.tmp"))


def test_bigfile_only_dataset_is_read(tiny_data, tmp_path):
    import shutil

    root = tmp_path / "big"
    shutil.copytree(tiny_data, root)
    layout = DatasetLayout(root, "charades")
    layout.feature_hdf5.unlink()
    ds = EvalVideos(layout, "test")
    clip, frames = ds[0]
    ref = EvalVideos(DatasetLayout(tiny_data, "charades"), "test")[0]
    np.testing.assert_array_equal(clip, ref[0])
    np.testing.assert_array_equal(frames, ref[1])


def test_video2frames_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "video2frames.txt"
    p.write_text(f"__import__('pathlib').Path({str(marker)!r}).write_text('x')")
    with pytest.raises(DataError, match="video2frames.txt"):
        read_video2frames(p)
    assert not marker.exists()


def test_bad_caption_line(tmp_path):
    p = tmp_path / "c.caption.txt"
    p.write_text("vid1#enc#0 fine\nnohash here\n")
    with pytest.raises(DataError, match=r"c.caption.txt:2"):
        read_captions(p)


def test_bigfile_size_mismatch(tmp_path):
    (tmp_path / "shape.txt").write_text("2 4")
    (tmp_path / "id.txt").write_text("a b")
    (tmp_path / "feature.bin").write_bytes(b"\0" * 12)
    with pytest.raises(DataError, match="feature.bin.*expected 32"):
        BigFileStore(tmp_path, {"v": ["a", "b"]})


def test_bigfile_rows_are_found_through_id_txt(tiny_data, tmp_path):
    """feature.bin rows need not be in video order: each frame's row comes from id.txt. A BigFile written in
    shuffled row order reads (and converts through the CLI) to exactly the same features."""
    import shutil
    import subprocess
    import sys

    root = tmp_path / "shuffled"
    shutil.copytree(tiny_data, root)
    layout = DatasetLayout(root, "charades")
    ref = Hdf5Store(DatasetLayout(tiny_data, "charades").feature_hdf5, "video features")
    v2f = read_video2frames(layout.video2frames_file)
    names = [f for fids in v2f.values() for f in fids]
    rows = {f: row for vid, fids in v2f.items() for f, row in zip(fids, ref.get(vid), strict=True)}
    order = np.random.default_rng(0).permutation(len(names))
    shuffled = [names[i] for i in order]
    np.stack([rows[f] for f in shuffled]).astype("<f4").tofile(layout.feature_dir / "feature.bin")
    (layout.feature_dir / "id.txt").write_text(" ".join(shuffled))
    layout.feature_hdf5.unlink()
    big = BigFileStore(layout.feature_dir, v2f)
    for vid in ref.keys()[:10]:
        np.testing.assert_array_equal(big.get(vid), ref.get(vid))
    r = subprocess.run([sys.executable, "-m", "prvr.cli", "data", "convert", str(root), "--collection", "charades"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    with h5py.File(layout.feature_hdf5, "r") as f:
        assert sorted(f) == sorted(ref.keys())
        for vid in ref.keys():
            np.testing.assert_array_equal(f[vid][...], ref.get(vid))
