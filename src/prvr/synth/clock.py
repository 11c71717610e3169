"""The clock of synthetic videos: frames at a fixed step, each stamped at the middle of its interval."""

FRAME_STEP = 0.5  # seconds between synthetic frames (2 fps): a moment reported in frames instead of seconds shows


def frame_clock(n: int, step: float = FRAME_STEP) -> dict:
    """Duration and frame times of n frames sampled every `step` seconds, each stamped at the middle of its
    interval (as `prvr extract` records videos)."""
    return {"duration": n * step, "frame_times": [(i + 0.5) * step for i in range(n)]}
