"""Malformed input, one row per class: every row builds its bad input here (nothing downloaded), runs the command
a user types (in-process through `prvr.cli.main`, so the suite stays fast), and asserts exit code 2, a single
`error: ...` line naming the file, id or field, no traceback, and untouched outputs: the row's output paths do not
exist afterwards (or are byte-identical to before) and no temporary file is left anywhere under the row's folder.

Full or read-only disks are simulated: `OSError(ENOSPC)` raised from h5py's dataset writes mid-way (as HDF5 does
when the disk fills), `OSError(EROFS)` from the write probe. (`prvr synth` into a real 2 MB tmpfs was also checked
by hand: one line, exit 2, no file left.)
"""

from __future__ import annotations

import errno
import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from prvr.cli import main
from prvr.data.layout import DatasetLayout
from prvr.models import build_model
from prvr.models.checkpoint import save_checkpoint
from prvr.models.presets import load_preset
from tests.conftest import tiny_model_config

TINY_TRAIN = ["--set", "model.visual_dim=48", "--set", "model.text_dim=40", "--set", "model.hidden_size=32",
              "--set", "train.batch_videos=16", "--epochs", "1", "--device", "cpu", "--quiet"]


def prvr(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A (random) tiny model of the tiny data's feature sizes (48-d frames, 40-d tokens)."""
    cfg = load_preset("charades")
    cfg.model = tiny_model_config()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    torch.manual_seed(0)
    save_checkpoint(path, build_model(cfg.model), cfg)
    return path


@pytest.fixture(scope="module")
def index(tiny_data, ckpt, tmp_path_factory) -> Path:
    from prvr.index.build import build_index

    out = tmp_path_factory.mktemp("index") / "index"
    build_index(ckpt, DatasetLayout(tiny_data, "charades"), "test", out, shard_size=8, progress=False)
    return out


def data_copy(tiny_data: Path, tmp: Path) -> DatasetLayout:
    shutil.copytree(tiny_data, tmp / "data")
    return DatasetLayout(tmp / "data", "charades")


def split_ids(layout: DatasetLayout, split: str) -> tuple[list[str], list[str]]:
    caps = [line.split(" ", 1)[0] for line in layout.caption_file(split).read_text().splitlines() if line]
    return caps, list(dict.fromkeys(c.split("#", 1)[0] for c in caps))


def set_video(layout: DatasetLayout, vid: str, fn) -> None:
    with h5py.File(layout.feature_hdf5, "a") as f:
        data = fn(f[vid][...])
        del f[vid]
        f[vid] = data


def set_query(layout: DatasetLayout, qid: str, fn) -> None:
    with h5py.File(layout.query_feature_file, "a") as f:
        data = fn(f[qid][...])
        del f[qid]
        f[qid] = data


def nan_at(a):
    a = a.copy()
    a[len(a) // 2, 3] = np.nan
    return a


# ------------------------------------------------------------------------------------------------ the rows
# each: (tmp, tiny_data, ckpt, index, monkeypatch) -> (argv, [expected substrings], [outputs that must not appear])
def nan_train_video(tmp, data, ckpt, index, mp):
    lay = data_copy(data, tmp)
    vid = split_ids(lay, "train")[1][5]
    set_video(lay, vid, nan_at)
    return ["train", "--preset", "charades", "--data", lay.root, "--out", tmp / "run", *TINY_TRAIN], \
        [vid, "NaN", "feature.hdf5", "--skip-bad"], [tmp / "run"]


def nan_video_in_loader_worker(tmp, data, ckpt, index, mp):  # raised in a DataLoader worker process
    argv, expect, gone = nan_train_video(tmp, data, ckpt, index, mp)
    return argv + ["--set", "train.num_workers=1"], expect, gone


def nan_test_video_eval(tmp, data, ckpt, index, mp):
    lay = data_copy(data, tmp)
    vid = split_ids(lay, "test")[1][3]
    set_video(lay, vid, nan_at)
    return ["eval", "--checkpoint", ckpt, "--data", lay.root, "--json", tmp / "m.json", "--device", "cpu",
            "--quiet"], [vid, "NaN"], [tmp / "m.json"]


def nan_caption_eval(tmp, data, ckpt, index, mp):
    lay = data_copy(data, tmp)
    qid = split_ids(lay, "test")[0][2]
    set_query(lay, qid, lambda a: np.full_like(a, np.inf))
    return ["eval", "--checkpoint", ckpt, "--data", lay.root, "--json", tmp / "m.json", "--device", "cpu",
            "--quiet"], [qid, "NaN or Inf", "roberta_charades_query_feat.hdf5"], [tmp / "m.json"]


def nan_weights(tmp, data, ckpt, index, mp):
    from safetensors.torch import load_file, safe_open, save_file

    bad = tmp / "nan.safetensors"
    tensors = load_file(str(ckpt))
    name = sorted(tensors)[7]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    with safe_open(str(ckpt), "pt") as f:
        meta = f.metadata()
    save_file(tensors, str(bad), metadata=meta)
    return ["eval", "--checkpoint", bad, "--data", data, "--json", tmp / "m.json", "--device", "cpu", "--quiet"], \
        ["nan.safetensors", "NaN", name], [tmp / "m.json"]


def lr_nan(tmp, data, ckpt, index, mp):
    return ["train", "--preset", "charades", "--data", data, "--out", tmp / "run", *TINY_TRAIN, "--set", "train.lr=.nan"], \
        ["train.lr", "finite"], [tmp / "run"]


def max_desc_l_zero(tmp, data, ckpt, index, mp):
    return ["train", "--preset", "charades", "--data", data, "--out", tmp / "run", *TINY_TRAIN,
            "--set", "model.max_desc_l=0"], ["model.max_desc_l", "1 <= x <= 4096"], [tmp / "run"]


def index_nan_video(tmp, data, ckpt, index, mp):
    lay = data_copy(data, tmp)
    vid = split_ids(lay, "test")[1][0]
    set_video(lay, vid, nan_at)
    return ["index", "build", "--checkpoint", ckpt, "--data", lay.root, "--out", tmp / "idx", "--device", "cpu",
            "--quiet"], [vid, "NaN"], [tmp / "idx"]


def preset_dims(tmp, data, ckpt, index, mp):  # the likeliest newcomer mistake: a preset on other data
    return ["train", "--preset", "charades", "--data", data, "--out", tmp / "run", "--epochs", "1", "--quiet"], \
        ["48-d", "model.visual_dim=1024", "--set model.visual_dim=48"], [tmp / "run"]


def _other_ckpt(tmp) -> Path:
    cfg = load_preset("charades")
    cfg.model = tiny_model_config(visual_dim=32)
    path = tmp / "other.safetensors"
    save_checkpoint(path, build_model(cfg.model), cfg)
    return path


def ckpt_dims_eval(tmp, data, ckpt, index, mp):
    return ["eval", "--checkpoint", _other_ckpt(tmp), "--data", data, "--json", tmp / "m.json", "--quiet"], \
        ["48-d", "other.safetensors", "model.visual_dim=32"], [tmp / "m.json"]


def ckpt_dims_index(tmp, data, ckpt, index, mp):
    return ["index", "build", "--checkpoint", _other_ckpt(tmp), "--data", data, "--out", tmp / "idx", "--quiet"], \
        ["48-d", "model.visual_dim=32"], [tmp / "idx"]


def wrong_width_video(tmp, data, ckpt, index, mp):
    lay = data_copy(data, tmp)
    vid = split_ids(lay, "test")[1][4]
    set_video(lay, vid, lambda a: a[:, :47])
    return ["eval", "--checkpoint", ckpt, "--data", lay.root, "--json", tmp / "m.json", "--quiet"], \
        [vid, "dim 47, expected 48"], [tmp / "m.json"]


def wrong_width_index(tmp, data, ckpt, index, mp):
    lay = data_copy(data, tmp)
    vid = split_ids(lay, "test")[1][4]
    set_video(lay, vid, lambda a: a[:, :47])
    return ["index", "build", "--checkpoint", ckpt, "--data", lay.root, "--out", tmp / "idx", "--quiet"], \
        [vid, "dim 47, expected 48"], [tmp / "idx"]


def existing_run(tmp, data, ckpt, index, mp):
    run = tmp / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model: {name: dreamprvr}\n")
    (run / "metrics.jsonl").write_text('{"epoch": 0}\n')
    shutil.copy(ckpt, run / "best.safetensors")
    return ["train", "--preset", "charades", "--data", data, "--out", run, *TINY_TRAIN], \
        ["holds a run", "--resume", "--overwrite"], []


def resume_with_preset(tmp, data, ckpt, index, mp):
    return ["train", "--resume", "--preset", "charades", "--out", tmp / "run"], ["--resume", "--preset"], [tmp / "run"]


def resume_nothing(tmp, data, ckpt, index, mp):
    (tmp / "run").mkdir()
    return ["train", "--resume", "--out", tmp / "run"], ["nothing to resume", "last.safetensors"], []


def eval_json_unwritable(tmp, data, ckpt, index, mp):
    (tmp / "file").write_text("a file, not a folder")
    return ["eval", "--checkpoint", ckpt, "--data", data, "--json", tmp / "file" / "m.json", "--quiet"], \
        ["--json", "not a directory"], []


def save_scores_is_dir(tmp, data, ckpt, index, mp):
    (tmp / "scores").mkdir()
    return ["eval", "--checkpoint", ckpt, "--data", data, "--save-scores", tmp / "scores", "--quiet"], \
        ["--save-scores", "is a directory"], []


def synth_disk_full(tmp, data, ckpt, index, mp):
    calls = {"n": 0}
    real = h5py.Group.create_dataset

    def filling(self, *a, **kw):
        if "feature.hdf5" in self.file.filename:
            calls["n"] += 1
            if calls["n"] > 30:  # the disk fills up in the middle of the video features
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **kw)

    mp.setattr(h5py.Group, "create_dataset", filling)
    return ["synth", tmp / "root", "--preset", "tiny"], ["no space left", "feature.hdf5"], [tmp / "root" / "charades" / "TextData" / "charadestrain.caption.txt", tmp / "root" / "charades" / "FeatureData" / "i3d_rgb_lgi" / "feature.hdf5"]


def train_out_read_only(tmp, data, ckpt, index, mp):
    import prvr.io

    def read_only(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system")

    mp.setattr(prvr.io.tempfile, "mkstemp", read_only)
    return ["train", "--preset", "charades", "--data", data, "--out", tmp / "run", *TINY_TRAIN], \
        ["run directory", "read-only file system"], [tmp / "run"]


def caption_not_utf8(tmp, data, ckpt, index, mp):
    lay = data_copy(data, tmp)
    lines = lay.caption_file("test").read_bytes().split(b"\n")
    lines[6] = lines[6] + b" caf\xe9"
    lay.caption_file("test").write_bytes(b"\n".join(lines))
    return ["eval", "--checkpoint", ckpt, "--data", lay.root, "--json", tmp / "m.json", "--quiet"], \
        ["charadestest.caption.txt:7", "UTF-8"], [tmp / "m.json"]


def caption_not_utf8_check(tmp, data, ckpt, index, mp):
    argv, expect, outs = caption_not_utf8(tmp, data, ckpt, index, mp)
    return ["data", "check", tmp / "data", "--collection", "charades"], expect, outs


def hdf5_corrupt_chunk(tmp, data, ckpt, index, mp):
    lay = data_copy(data, tmp)
    vid = split_ids(lay, "test")[1][2]
    with h5py.File(lay.feature_hdf5, "a") as f:
        arr = f[vid][...]
        del f[vid]
        f.create_dataset(vid, data=arr, compression="gzip", chunks=(4, arr.shape[1]))
        info = f[vid].id.get_chunk_info(0)
    with open(lay.feature_hdf5, "r+b") as fh:  # scramble the middle of the first compressed chunk
        fh.seek(info.byte_offset + info.size // 3)
        fh.write(bytes(range(7, 7 + min(40, info.size // 3))))
    return ["eval", "--checkpoint", ckpt, "--data", lay.root, "--json", tmp / "m.json", "--quiet"], \
        ["feature.hdf5", vid, "unreadable"], [tmp / "m.json"]


def hdf5_corrupt_chunk_check(tmp, data, ckpt, index, mp):
    argv, expect, outs = hdf5_corrupt_chunk(tmp, data, ckpt, index, mp)
    return ["data", "check", tmp / "data", "--collection", "charades"], expect, outs


def video2frames_nested(tmp, data, ckpt, index, mp):
    shutil.copytree(data, tmp / "data")
    lay = DatasetLayout(tmp / "data", "charades")
    lay.feature_hdf5.unlink()  # the BigFile form is read
    lay.video2frames_file.write_text("[" * 200_000 + "]" * 200_000)
    return ["data", "check", lay.root, "--collection", "charades"], ["video2frames.txt", "dict literal"], []


def yaml_list(tmp, data, ckpt, index, mp):
    (tmp / "c.yaml").write_text("- train\n- lr\n")
    return ["train", "--config", tmp / "c.yaml", "--data", data, "--out", tmp / "run"], ["c.yaml", "mapping"], [tmp / "run"]


def yaml_scalar(tmp, data, ckpt, index, mp):
    (tmp / "c.yaml").write_text("42\n")
    return ["train", "--config", tmp / "c.yaml", "--data", data, "--out", tmp / "run"], ["c.yaml", "mapping"], [tmp / "run"]


def ckpt_zero_bytes(tmp, data, ckpt, index, mp):
    (tmp / "best.ckpt").write_bytes(b"")
    return ["convert-checkpoint", tmp / "best.ckpt", tmp / "out.safetensors"], ["best.ckpt", "empty"], [tmp / "out.safetensors"]


def ckpt_text(tmp, data, ckpt, index, mp):
    (tmp / "best.ckpt").write_text("this is not a checkpoint\n" * 20)
    return ["convert-checkpoint", tmp / "best.ckpt", tmp / "out.safetensors"], ["best.ckpt", "weights-only"], [tmp / "out.safetensors"]


def safetensors_text(tmp, data, ckpt, index, mp):
    (tmp / "m.safetensors").write_text("not safetensors")
    return ["eval", "--checkpoint", tmp / "m.safetensors", "--data", data, "--quiet"], ["m.safetensors"], []


def _index_copy(index: Path, tmp: Path) -> Path:
    shutil.copytree(index, tmp / "idx")
    return tmp / "idx"


def _search(idx: Path, data: Path) -> list:
    qid = split_ids(DatasetLayout(data, "charades"), "test")[0][0]
    return ["search", idx, "--query-id", qid, "--data", data]


def manifest_list(tmp, data, ckpt, index, mp):
    idx = _index_copy(index, tmp)
    (idx / "manifest.json").write_text("[]")
    return _search(idx, data), ["manifest.json", "expected an object"], []


def manifest_shard_outside(tmp, data, ckpt, index, mp):
    idx = _index_copy(index, tmp)
    m = json.loads((idx / "manifest.json").read_text())
    m["shards"][0] = "../../elsewhere"
    (idx / "manifest.json").write_text(json.dumps(m))
    return _search(idx, data), ["manifest.json", "plain directory names inside the index"], []


def shard_symlink_outside(tmp, data, ckpt, index, mp):
    idx = _index_copy(index, tmp)
    shutil.move(idx / "shard-00001", tmp / "elsewhere")
    (idx / "shard-00001").symlink_to(tmp / "elsewhere")
    return _search(idx, data), ["manifest.json", "'shard-00001' lies outside the index directory"], []


def _edit_shard(index, tmp, name, fn):
    idx = _index_copy(index, tmp)
    path = idx / "shard-00000" / name
    if name.endswith(".json"):
        path.write_text(json.dumps(fn(json.loads(path.read_text()))))
    else:
        np.save(path, fn(np.load(path)))
    return idx


def ids_too_short(tmp, data, ckpt, index, mp):
    return _search(_edit_shard(index, tmp, "ids.json", lambda x: x[:-1]), data), ["shard-00000"], []


def meta_too_short(tmp, data, ckpt, index, mp):
    return _search(_edit_shard(index, tmp, "meta.json", lambda x: x[:-1]), data), ["meta.json", "one per video id"], []


def offsets_too_short(tmp, data, ckpt, index, mp):
    return _search(_edit_shard(index, tmp, "frame.offsets.npy", lambda x: x[:-2]), data), ["shard-00000", "offsets"], []


def meta_nan_duration(tmp, data, ckpt, index, mp):
    def bad(meta):
        meta[1]["duration"] = float("nan")
        return meta

    idx = _index_copy(index, tmp)
    path = idx / "shard-00000" / "meta.json"
    path.write_text(json.dumps(bad(json.loads(path.read_text()))))  # json writes NaN, as a crafted file may
    return _search(idx, data), ["meta.json", "NaN"], []


def tokens_nan(tmp, data, ckpt, index, mp):
    def bad(t):
        t = t.copy()
        t[40, 5] = np.nan
        return t

    return _search(_edit_shard(index, tmp, "frame.tokens.npy", bad), data), ["shard-00000", "NaN/Inf tokens"], []


def ann_meta_list(tmp, data, ckpt, index, mp):
    idx = _index_copy(index, tmp)
    (idx / "ann.json").write_text("[]")
    (idx / "ann.faiss").write_bytes(b"junk")
    (idx / "ann.owners.npy").write_bytes(b"junk")
    return _search(idx, data), ["ANN", "rebuild"], []


def range_rows():
    train = ["train", "--preset", "charades", "--epochs", "1", "--quiet"]
    return {
        "batch_videos=0": (train + ["--set", "train.batch_videos=0"], ["train.batch_videos", "1 <= x <= 100000"]),
        "map_size=0": (train + ["--set", "model.map_size=0"], ["model.map_size", "1 <= x <= 1024"]),
        "input_drop=1.5": (train + ["--set", "model.input_drop=1.5"], ["model.input_drop", "0.0 <= x <= 0.9"]),
        "n_heads-not-dividing": (train + ["--set", "model.hidden_size=30", "--set", "model.n_heads=4"],
                                 ["model.hidden_size=30", "model.n_heads=4", "multiple"]),
        "textual_structure": (train + ["--set", "loss.textual_structure=all"], ["one of both, qdl, qsp, none"]),
        "collection-path": (train + ["--set", "data.collection=../x"], ["data.collection", "plain folder name"]),
        "serve-port": (["serve", "/nonexistent", "--port", "70000"], ["--port", "1 <= x <= 65535"]),
        "synth-scale-0": (["synth", "/nonexistent", "--scale", "0"], ["--scale", "0.001 <= x <= 1000.0"]),
        "search-k-0": (["search", "/nonexistent", "q", "-k", "0"], ["--top-k", "1 <= x <= 1000"]),
        "extract-fps-0": (["extract", "/nonexistent", "/nonexistent2", "-c", "x", "--frame-encoder", "hf:/x",
                           "--fps", "0"], ["--fps", "0.01 <= x <= 1000.0"]),
        "eval-split": (["eval", "--checkpoint", "x", "--data", "y", "--split", "dev"], ["--split", "'dev'"]),
        "serve-short-token": (["serve", "/nonexistent", "--token", "abc"], ["--token", "at least 16"]),
    }


def data_check_missing_split(tmp, data, ckpt, index, mp):
    lay = data_copy(data, tmp)
    lay.caption_file("val").unlink()
    return ["data", "check", lay.root, "--collection", "charades"], ["charadesval.caption.txt", "not found"], []


def extract_nothing_extracted(tmp, data, ckpt, index, mp):
    videos = tmp / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"")
    (videos / "b.mp4").write_bytes(b"\x00 not a video" * 40)
    enc = tmp / "enc"
    from transformers import CLIPVisionConfig, CLIPVisionModel

    CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     image_size=16, patch_size=8)).save_pretrained(enc)
    return ["extract", videos, tmp / "root", "-c", "mine", "--frame-encoder", f"hf:{enc}", "--quiet"], \
        ["none of the 2 video files", "a.mp4"], [tmp / "root" / "mine" / "FeatureData" / "features" / "feature.hdf5"]


ROWS = {f.__name__: f for f in [
    nan_train_video, nan_video_in_loader_worker, nan_test_video_eval, nan_caption_eval, nan_weights, lr_nan, max_desc_l_zero, index_nan_video,
    preset_dims, ckpt_dims_eval, ckpt_dims_index, wrong_width_video, wrong_width_index,
    existing_run, resume_with_preset, resume_nothing,
    eval_json_unwritable, save_scores_is_dir, synth_disk_full, train_out_read_only,
    caption_not_utf8, caption_not_utf8_check, hdf5_corrupt_chunk, hdf5_corrupt_chunk_check, video2frames_nested,
    yaml_list, yaml_scalar, ckpt_zero_bytes, ckpt_text, safetensors_text,
    manifest_list, manifest_shard_outside, shard_symlink_outside, ids_too_short, meta_too_short, offsets_too_short, meta_nan_duration,
    tokens_nan, ann_meta_list, data_check_missing_split, extract_nothing_extracted]}


def _snapshot(tmp: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in tmp.rglob("*") if p.is_file() and p.stat().st_size < 5_000_000}


def assert_clean_failure(code: int, out: str, err: str, expect: list[str], tmp: Path, before: dict, gone: list[Path],
                         report: bool = False):
    """`report`: `prvr data check` lists every problem, one line each, then how many (here: one)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    if report:
        assert len(lines) == 2 and lines[1] == "1 problem(s) found", err[-2000:]
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    for s in expect:
        assert s in lines[0], (s, lines[0])
    for p in gone:
        assert not p.exists(), f"{p} was left behind"
    for p, content in before.items():
        assert p.exists() and p.read_bytes() == content, f"{p} changed"
    assert not [p for p in tmp.rglob(".*.tmp")], "temporary files left behind"


@pytest.mark.parametrize("row", list(ROWS))
def test_malformed_input(row, tmp_path, tiny_data, ckpt, index, monkeypatch):
    argv, expect, gone = ROWS[row](tmp_path, tiny_data, ckpt, index, monkeypatch)
    before = _snapshot(tmp_path)
    code, out, err = prvr(*argv)
    assert_clean_failure(code, out, err, expect, tmp_path, before, gone, report=argv[:2] == ["data", "check"])


@pytest.mark.parametrize("row", list(range_rows()))
def test_out_of_range(row, tmp_path):
    argv, expect = range_rows()[row]
    code, out, err = prvr(*argv)
    assert_clean_failure(code, out, err, expect, tmp_path, {}, [])
