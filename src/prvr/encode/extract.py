"""`prvr extract`: a folder of videos (and optionally their captions) -> a dataset in the release layout.

Writes FeatureData/<feature>/{feature.hdf5, video2frames.txt, video_info.json} and, with
captions, TextData/<collection><split>.caption.txt + roberta_<collection>_query_feat.hdf5 (the release's file
name, whatever the text encoder); TextData/text_encoder.json records the text encoder so that free-text
queries are later encoded the same way. A bad video is reported and skipped; files are written atomically.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from prvr.data.layout import DatasetLayout, read_captions, video_id_of
from prvr.data.writer import DatasetWriter
from prvr.encode.encoders import encoder_record, load_frame_encoder, load_text_encoder
from prvr.encode.video import VIDEO_SUFFIXES, decode
from prvr.errors import DataError, PrvrError
from prvr.io import check_writable

_ID = re.compile(r"^[^#\s]+$")
ENCODERS_FILE = "encoders.json"  # <root>/<collection>/encoders.json: what the features were made with


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
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason}); expected a UTF-8 caption file") from None
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
    if not fps > 0 or fps > 1000:
        raise PrvrError(f"fps={fps}: expected 0 < fps <= 1000")
    caps = _read_caption_lines(captions) if captions is not None else []
    check_writable(root, "dataset root", directory=True)  # before any decoding
    fenc = load_frame_encoder(frame_encoder, device)
    tenc = load_text_encoder(text_encoder, device) if text_encoder else None  # fail early, before any decoding
    rep = ExtractReport(DatasetLayout(root, collection, feature))
    with DatasetWriter(root, collection, feature) as out:
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
            out.add_video(vid, fenc.encode(video.frames),
                          {"duration": video.duration, "frame_times": video.times, "file": str(path.resolve())})
            rep.videos.append(vid)
        if not rep.videos:  # nothing is written; the previous dataset there (if any) stays as it was
            raise DataError(f"{videos_dir}: none of the {len(files)} video files could be extracted "
                            f"(e.g. {rep.failures[0]})")
        out.set_media_roots([Path(videos_dir)])  # `prvr serve` sends files from under recorded folders only
        if tenc is not None:
            out.set_text_encoder(tenc.spec)
        out.add_json(ENCODERS_FILE, encoder_record(fenc, tenc, fps))  # specs, preprocessing, package versions
        extracted = set(rep.videos)
        kept = [(c, t) for c, t in caps if video_id_of(c) in extracted]
        rep.failures.extend(f"{captions}: caption {c!r} names a video that was not extracted"
                            for c, _ in caps if video_id_of(c) not in extracted)
        if kept:
            for (c, t), f in zip(kept, tenc.encode([t for _, t in kept]), strict=True):
                out.add_caption(split, c, t, f)
            rep.n_captions = len(kept)
    return rep
