"""Where things live in the standard PRVR feature release (MS-SL bundle, reused by GMMFormer/HLFormer/DreamPRVR).

<root>/<collection>/TextData/<collection>{train,val,test}.caption.txt
<root>/<collection>/TextData/roberta_<collection>_query_feat.hdf5
<root>/<collection>/FeatureData/<feature>/{feature.hdf5 | feature.bin id.txt shape.txt} + video2frames.txt
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from prvr.config import NAME_PATTERN
from prvr.errors import ConfigError, DataError

# collection -> default visual feature folder of the release
COLLECTIONS: dict[str, str] = {"activitynet": "i3d", "charades": "i3d_rgb_lgi", "tvr": "i3d_resnet"}
ALIASES: dict[str, str] = {"act": "activitynet", "cha": "charades"}
SPLITS = ("train", "val", "test")


def canonical_collection(name: str) -> str:
    return ALIASES.get(name, name)


def video_id_of(cap_id: str) -> str:
    """`<video_id>#enc#<n>` -> `<video_id>` (everything before the first '#')."""
    return cap_id.split("#", 1)[0]


@dataclass(frozen=True)
class DatasetLayout:
    root: Path
    collection: str
    visual_feature: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "collection", canonical_collection(self.collection))
        if self.visual_feature is None:
            object.__setattr__(self, "visual_feature", COLLECTIONS.get(self.collection, "features"))
        for what, name in (("collection", self.collection), ("visual feature", self.visual_feature)):
            if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
                raise ConfigError(f"{what} {name!r}: expected a plain folder name (letters, digits, _ . + -; "
                                  "no path separators)")

    @property
    def base(self) -> Path:
        return self.root / self.collection

    @property
    def text_dir(self) -> Path:
        return self.base / "TextData"

    @property
    def feature_dir(self) -> Path:
        return self.base / "FeatureData" / self.visual_feature

    def caption_file(self, split: str) -> Path:
        return self.text_dir / f"{self.collection}{split}.caption.txt"

    @property
    def query_feature_file(self) -> Path:
        return self.text_dir / f"roberta_{self.collection}_query_feat.hdf5"

    @property
    def feature_hdf5(self) -> Path:
        return self.feature_dir / "feature.hdf5"

    @property
    def video2frames_file(self) -> Path:
        return self.feature_dir / "video2frames.txt"

    @property
    def video_info_file(self) -> Path:
        """Optional per-video duration and frame times (written by `prvr extract`)."""
        return self.feature_dir / "video_info.json"

    @property
    def media_roots_file(self) -> Path:
        """Optional record of the folders the videos were extracted from (written by `prvr extract`)."""
        return self.feature_dir / "media_roots.json"

    @property
    def text_encoder_file(self) -> Path:
        """Optional record of the text encoder the query tokens came from (written by extract, everyday)."""
        return self.text_dir / "text_encoder.json"

    def splits_present(self) -> list[str]:
        return [s for s in SPLITS if self.caption_file(s).exists()]


def read_captions(path: Path) -> list[tuple[str, str]]:
    """Read a caption file: one `<cap_id> <text>` per line, in file order (UTF-8)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: caption file not found")
    out: list[tuple[str, str]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                cap_id, _, text = line.partition(" ")
                if "#" not in cap_id or not video_id_of(cap_id):
                    raise DataError(f"{path}:{lineno}: caption id {cap_id!r} is not of the form <video_id>#enc#<n>")
                out.append((cap_id, text))
    except UnicodeDecodeError as e:
        line_no = _line_of_byte(path)
        raise DataError(f"{path}:{line_no}: not UTF-8 text ({e.reason}); expected a UTF-8 caption file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the caption file ({e.strerror})") from None
    if not out:
        raise DataError(f"{path}: no captions")
    return out


def _line_of_byte(path: Path) -> int:
    """The line holding the first byte that is not UTF-8 (the decoder's offset is within its chunk)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return data.count(b"\n", 0, e.start) + 1
    return 0


def split_index(captions: list[tuple[str, str]]) -> tuple[list[str], list[str], list[int]]:
    """(query ids in line order, video ids in first-appearance order, video index of each query)."""
    video_ids: list[str] = []
    position: dict[str, int] = {}
    labels: list[int] = []
    for cap_id, _ in captions:
        vid = video_id_of(cap_id)
        if vid not in position:
            position[vid] = len(video_ids)
            video_ids.append(vid)
        labels.append(position[vid])
    return [c for c, _ in captions], video_ids, labels
