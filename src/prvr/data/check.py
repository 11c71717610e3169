"""Validate a dataset in the release layout: every problem is one line naming the file and the id."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from prvr.data.features import open_query_features, open_video_features
from prvr.data.layout import DatasetLayout, read_captions, split_index
from prvr.errors import DataError


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> videos, queries
    visual_dim: int | None = None
    text_dim: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_matrix(arr: np.ndarray, where: str, what: str, expected_dim: int | None, problems: list[str]) -> int | None:
    if arr.ndim != 2:
        problems.append(f"{where}: {what} has shape {arr.shape}, expected (n, dim)")
        return None
    if arr.shape[0] == 0:
        problems.append(f"{where}: {what} is empty (0 rows)")
    if expected_dim is not None and arr.shape[1] != expected_dim:
        problems.append(f"{where}: {what} has dim {arr.shape[1]}, expected {expected_dim}")
    if not np.isfinite(arr).all():
        problems.append(f"{where}: {what} contains NaN or Inf")
    return arr.shape[1]


def check_dataset(layout: DatasetLayout, visual_dim: int | None = None, text_dim: int | None = None,
                  progress: bool = False, expected_splits: list[str] | None = None) -> CheckReport:
    """Every problem of a dataset, one line each. `expected_splits`: caption files that must be there (a missing
    one is a problem); the splits present are checked either way."""
    from tqdm import tqdm

    rep = CheckReport()
    splits = layout.splits_present()
    if not splits:
        rep.problems.append(f"{layout.text_dir}: no caption files ({layout.collection}{{train,val,test}}.caption.txt)")
        return rep
    for split in expected_splits or []:
        if split not in splits:
            rep.problems.append(f"{layout.caption_file(split)}: caption file of split {split!r} not found "
                                "(pass --split to check only the splits you have)")
    try:
        videos = open_video_features(layout)
        vfile = str(getattr(videos, "path", layout.feature_dir))
    except DataError as e:
        rep.problems.append(str(e))
        videos = None
    try:
        queries = open_query_features(layout)
        queries.keys()
    except DataError as e:
        rep.problems.append(str(e))
        queries = None
    seen_videos: set[str] = set()
    for split in splits:
        cap_file = layout.caption_file(split)
        try:
            q_ids, v_ids, _ = split_index(read_captions(cap_file))
        except DataError as e:
            rep.problems.append(str(e))
            continue
        rep.counts[split] = {"videos": len(v_ids), "queries": len(q_ids)}
        if videos is not None:
            for vid in tqdm(v_ids, desc=f"{split} videos", disable=not progress):
                if vid in seen_videos:
                    continue
                seen_videos.add(vid)
                try:
                    present = vid in videos
                except DataError as e:
                    rep.problems.append(str(e))
                    break
                if not present:
                    rep.problems.append(f"{vfile}: no features for video {vid!r} (captions in {cap_file.name})")
                    continue
                try:
                    arr = videos.get(vid)
                except DataError as e:
                    rep.problems.append(str(e))
                    continue
                d = _check_matrix(arr, vfile, f"video {vid!r}", visual_dim or rep.visual_dim, rep.problems)
                rep.visual_dim = rep.visual_dim or d
        if queries is not None:
            qfile = str(queries.path)
            for qid in tqdm(q_ids, desc=f"{split} queries", disable=not progress):
                try:
                    present = qid in queries
                except DataError as e:
                    rep.problems.append(str(e))
                    break
                if not present:
                    rep.problems.append(f"{qfile}: no token features for caption {qid!r} ({cap_file.name})")
                    continue
                try:
                    arr = queries.get(qid)
                except DataError as e:
                    rep.problems.append(str(e))
                    continue
                d = _check_matrix(arr, qfile, f"caption {qid!r}", text_dim or rep.text_dim, rep.problems)
                rep.text_dim = rep.text_dim or d
    return rep
