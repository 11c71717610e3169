"""Standard PRVR feature release: layout, readers, preprocessing, datasets, synthetic data."""

from prvr.data.layout import COLLECTIONS, DatasetLayout, read_captions, video_id_of
from prvr.data.preprocess import average_to_fixed_length, clip_grid, frame_sequence, l2_normalize

__all__ = [
    "COLLECTIONS",
    "DatasetLayout",
    "average_to_fixed_length",
    "clip_grid",
    "frame_sequence",
    "l2_normalize",
    "read_captions",
    "video_id_of",
]
