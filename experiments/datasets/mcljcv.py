"""tensorflow-datasets builder for the MCL-JCV test set, read from a local directory (never downloaded).

Accepted files (anywhere under the manual directory):

- raw 8-bit 4:2:0 YUV named ``videoSRCNN_WxH_FPS.yuv``, e.g. ``videoSRC01_1920x1080_30.yuv``
  (size and frame rate come from the name);
- video files ``videoSRCNN*.mp4`` (also ``.mkv .mov .avi .webm .y4m``).

The clip name is ``videoSRCNN`` (two digits). Other files are ignored (``.yuv`` files with another
pattern with a warning). Configs and record layout: :mod:`experiments.datasets.common`.
"""
from __future__ import annotations

import os
import re
import warnings

from experiments.datasets.common import VIDEO_SUFFIXES, ClipSource, VideoClipsBuilder

_YUV_RE = re.compile(r"^videoSRC(?P<num>\d+)_(?P<w>\d+)x(?P<h>\d+)_(?P<fps>\d+(?:\.\d+)?)\.yuv$", re.I)
_VIDEO_RE = re.compile(r"^videoSRC(?P<num>\d+)(?:_(?P<w>\d+)x(?P<h>\d+))?(?:_.*)?$", re.I)


def parse_mcljcv_filename(path: str) -> ClipSource | None:
    """``videoSRC01_1920x1080_30.yuv`` -> ClipSource("videoSRC01", path, "yuv", 1920, 1080, 30.0)."""
    filename = os.path.basename(path)
    m = _YUV_RE.match(filename)
    if m:
        return ClipSource(f"videoSRC{int(m['num']):02d}", path, "yuv", int(m["w"]), int(m["h"]), float(m["fps"]))
    stem, suffix = os.path.splitext(filename)
    if suffix.lower() == ".yuv":
        warnings.warn(f"mcljcv: ignoring {filename} (not videoSRCNN_WxH_FPS.yuv)", stacklevel=3)
        return None
    m = _VIDEO_RE.match(stem)
    if m and suffix.lower() in VIDEO_SUFFIXES:
        w, h = (None, None) if m["w"] is None else (int(m["w"]), int(m["h"]))
        return ClipSource(f"videoSRC{int(m['num']):02d}", path, "video", w, h)
    return None


class MclJcv(VideoClipsBuilder):
    """MCL-JCV (USC Media Communications Lab) 30 source sequences from a local directory."""

    name = "mcljcv"
    DESCRIPTION = (
        "MCL-JCV source sequences videoSRC01..30 (8-bit 4:2:0 raw YUV, BT.709 limited range, "
        "converted to RGB) read from a local directory; one record per chunk of frames."
    )
    HOMEPAGE = "https://mcl.usc.edu/mcl-jcv-dataset/"
    CITATION = """@inproceedings{wang2016mcljcv,
  title={MCL-JCV: a JND-based H.264/AVC video quality assessment dataset},
  author={Wang, Haiqiang and Gan, Weihao and Hu, Sudeng and Lin, Joe Yuchieh and Jin, Lina and
          Song, Longguang and Wang, Ping and Katsavounidis, Ioannis and Aaron, Anne and Kuo, C-C Jay},
  booktitle={IEEE International Conference on Image Processing (ICIP)},
  pages={1509--1513},
  year={2016}
}"""
    EXPECTED_FILES = "videoSRCNN_WxH_FPS.yuv or videoSRCNN.mp4"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Request MCL-JCV from https://mcl.usc.edu/mcl-jcv-dataset/ and put the source sequences "
        "videoSRC01_1920x1080_30.yuv ... videoSRC30_... (or .mp4) into the manual directory."
    )
    parse_filename = staticmethod(parse_mcljcv_filename)
