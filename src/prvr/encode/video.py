"""Decode a video file with PyAV at a fixed sampling rate into RGB frames of a given size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prvr.errors import DataError

# a declared duration may run past the last decoded frame by max(0.5 s, 2 frame periods, 5 %), not more
TRUNCATION_TOLERANCE_S, TRUNCATION_TOLERANCE = 0.5, 0.05

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv"}


@dataclass
class DecodedVideo:
    frames: np.ndarray  # (n, H, W, 3) uint8
    times: list[float]  # seconds, presentation time of each sampled frame
    duration: float
    thumbs: list[bytes] | None = None  # per sampled frame a small JPEG (aspect kept), when asked for


def jpeg(frame, width: int, quality: int = 75) -> bytes:
    """A PyAV frame as a small JPEG `width` pixels wide (aspect kept)."""
    import io

    from PIL import Image

    height = max(2, round(frame.height * width / max(1, frame.width) / 2) * 2)
    buf = io.BytesIO()
    Image.fromarray(frame.to_ndarray(width=width, height=height, format="rgb24")).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def decode(path: str | Path, fps: float = 1.0, size: tuple[int, int] = (224, 224), max_frames: int = 100_000,
           thumb_width: int | None = None) -> DecodedVideo:
    """Sample frames every 1/fps seconds (the first frame at or after each tick), resized to size=(W, H); with
    `thumb_width`, also a JPEG thumbnail of each sampled frame."""
    import av

    path = Path(path)
    if fps <= 0:
        raise DataError(f"fps={fps}: expected a positive rate")
    frames, times, thumbs = [], [], []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            next_tick = 0.0
            last_time = prev_time = 0.0
            n_decoded = 0
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else last_time + 1.0 / fps
                prev_time, last_time = last_time, t
                n_decoded += 1
                if t + 1e-6 < next_tick:
                    continue
                frames.append(frame.to_ndarray(width=size[0], height=size[1], format="rgb24"))
                if thumb_width:
                    thumbs.append(jpeg(frame, thumb_width))
                times.append(t)
                next_tick = (int(t * fps + 1e-6) + 1) / fps
                if len(frames) >= max_frames:
                    break
            duration = float(stream.duration * stream.time_base) if stream.duration else None
            if duration is None and container.duration:
                duration = container.duration / 1_000_000
            rate = float(stream.average_rate) if stream.average_rate else 0.0
    except DataError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable video ({e.__class__.__name__}: {e})") from None
    if not frames:
        raise DataError(f"{path}: no decodable frames (empty or zero-length video)")
    # the frames that decode must cover the duration the file declares: a truncated or damaged file otherwise
    # turns into a few frames stretched over the whole declared duration (moments in the wrong place)
    period = (last_time - prev_time) if n_decoded > 1 else (1.0 / rate if rate > 0 else 1.0 / fps)
    covered = last_time + period
    if duration and duration - covered > max(TRUNCATION_TOLERANCE_S, 2 * period, TRUNCATION_TOLERANCE * duration):
        raise DataError(f"{path}: truncated or damaged video: its frames decode up to {covered:.2f} s of the "
                        f"{duration:.2f} s it declares")
    if not duration or duration < last_time:
        duration = last_time + 1.0 / fps
    return DecodedVideo(np.stack(frames), times, duration, thumbs if thumb_width else None)


def die_with_parent() -> None:
    """Worker-process initializer (Linux): end this process when its parent dies, even by SIGKILL, so that a
    killed `prvr ingest` leaves no decoder behind."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def decode_job(path: str, fps: float, size: tuple[int, int], thumb_width: int | None) -> DecodedVideo | str:
    """`decode` for a worker process: a bad file comes back as its one-line message instead of an exception."""
    try:
        return decode(path, fps, size, thumb_width=thumb_width)
    except DataError as e:
        return str(e)
