"""`prvr extract`: a folder of videos (and optionally their captions) -> a dataset in the release layout.

Writes FeatureData/<feature>/{feature.hdf5, video2frames.txt, video_info.json, frame_encoder.json} and, with
captions, TextData/<collection><split>.caption.txt + roberta_<collection>_query_feat.hdf5 (the release's file
name, whatever the text encoder); TextData/text_encoder.json records the text encoder so that free-text
queries are later encoded the same way. A bad video is reported and skipped; files are written atomically.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
from tqdm import tqdm

from prvr.data.layout import DatasetLayout, read_captions, video_id_of
from prvr.encode.encoders import load_frame_encoder, load_text_encoder, parse_spec
from prvr.encode.video import VIDEO_SUFFIXES, decode
from prvr.errors import DataError, PrvrError
from prvr.io import atomic_path, write_json_atomic, write_text_atomic

_ID = re.compile(r"^[^#\s]+$")


@dataclass
class ExtractReport:
    layout: DatasetLayout
    videos: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    n_captions: int = 0


def list_videos(videos_dir: Path) -> list[Path]:
    videos_dir = Path(videos_dir)
    if not videos_dir.is_dir():
        raise PrvrError(f"{videos_dir}: not a directory")
    return sorted(p for p in videos_dir.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())


def _read_caption_lines(path: Path) -> list[tuple[str, str]]:
    """Release format `<video_id>#enc#<n> text`, or `<video_id> text` (numbered per video here)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: caption file not found")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if all("#" in ln.split(" ", 1)[0] for ln in lines):
        return read_captions(path)
    counts: dict[str, int] = {}
    out = []
    for i, ln in enumerate(lines, 1):
        vid, _, text = ln.partition(" ")
        if not _ID.match(vid) or not text:
            raise DataError(f"{path}:{i}: expected '<video_id> <caption>' or '<video_id>#enc#<n> <caption>'")
        out.append((f"{vid}#enc#{counts.get(vid, 0)}", text))
        counts[vid] = counts.get(vid, 0) + 1
    return out


def extract(videos_dir: Path, root: Path, collection: str, frame_encoder: str, text_encoder: str | None = None,
            captions: Path | None = None, split: str = "test", fps: float = 1.0, feature: str | None = None,
            device: str = "cpu", progress: bool = True) -> ExtractReport:
    files = list_videos(videos_dir)
    if not files:
        raise PrvrError(f"{videos_dir}: no video files ({', '.join(sorted(VIDEO_SUFFIXES))})")
    if captions is not None and text_encoder is None:
        raise PrvrError("--captions needs --text-encoder to encode them")
    caps = _read_caption_lines(captions) if captions is not None else []
    fenc = load_frame_encoder(frame_encoder, device)
    tenc_spec = parse_spec(text_encoder) if text_encoder else None
    layout = DatasetLayout(root, collection, feature)
    layout.feature_dir.mkdir(parents=True, exist_ok=True)
    layout.text_dir.mkdir(parents=True, exist_ok=True)
    rep = ExtractReport(layout)
    info, v2f = {}, {}
    with atomic_path(layout.feature_hdf5) as tmp, h5py.File(tmp, "w") as h5:
        for path in tqdm(files, desc="extract", unit="video", disable=not progress):
            vid = path.stem
            if not _ID.match(vid):
                rep.failures.append(f"{path}: file name {vid!r} cannot be a video id (no '#' or spaces)")
                continue
            try:
                video = decode(path, fps, fenc.size)
            except DataError as e:
                rep.failures.append(str(e))
                continue
            h5.create_dataset(vid, data=fenc.encode(video.frames))
            info[vid] = {"duration": video.duration, "frame_times": video.times, "file": str(path.resolve())}
            v2f[vid] = [f"{vid}_{i}" for i in range(len(video.times))]
            rep.videos.append(vid)
    write_text_atomic(layout.video2frames_file, repr(v2f))
    write_json_atomic(layout.video_info_file, info)
    write_json_atomic(layout.feature_dir / "frame_encoder.json", {**fenc.spec, "fps": fps})
    if tenc_spec is not None:
        write_json_atomic(layout.text_dir / "text_encoder.json", tenc_spec)
    if caps:
        kept = [(c, t) for c, t in caps if video_id_of(c) in info]
        for c, _ in caps:
            if video_id_of(c) not in info:
                rep.failures.append(f"{captions}: caption {c!r} names a video that was not extracted")
        if kept:
            tenc = load_text_encoder(tenc_spec, device)
            feats = tenc.encode([t for _, t in kept])
            with atomic_path(layout.query_feature_file) as tmp, h5py.File(tmp, "w") as h5:
                for (c, _), f in zip(kept, feats, strict=True):
                    h5.create_dataset(c, data=f)
            write_text_atomic(layout.caption_file(split), "".join(f"{c} {t}\n" for c, t in kept))
            rep.n_captions = len(kept)
    return rep


def recorded_text_encoder(layout: DatasetLayout) -> dict | None:
    path = layout.text_dir / "text_encoder.json"
    return json.loads(path.read_text()) if path.exists() else None
