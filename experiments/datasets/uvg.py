"""tensorflow-datasets builder for the UVG test set, read from a local directory (never downloaded).

Accepted files (anywhere under the manual directory):

- raw 8-bit 4:2:0 YUV named ``NAME_WxH_FPSfps_420_8bit_YUV.yuv``, e.g.
  ``Beauty_1920x1080_120fps_420_8bit_YUV.yuv`` or the 4K ``Beauty_3840x2160_120fps_420_8bit_YUV.yuv``
  (size and frame rate come from the name; clip name ``NAME``);
- video files (``.mp4 .mkv .mov .avi .webm .y4m``): clip name = the file name up to ``_WxH`` if
  present (``Beauty_1920x1080_120fps.mp4`` -> ``Beauty``), else the whole stem.

Other files are ignored (``.yuv`` files with another pattern, e.g. 10-bit, with a warning). When the
HD and 4K variants of a sequence are both present, the 1920x1080 one is ``NAME`` and the other
``NAME_3840x2160``. The 7 classic sequences used in learned video coding papers are
:data:`UVG_CLASSIC`. Configs and record layout: :mod:`experiments.datasets.common`.

Example::

    from experiments.datasets.uvg import Uvg
    b = Uvg(data_dir="/data/tfds", config="256x144_33f")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir="/data/uvg"))
    ds = b.as_data_source(split="test")
"""
from __future__ import annotations

import re

from experiments.datasets import UVG_CLASSIC  # noqa: F401  (re-exported)
from experiments.datasets.common import ClipSource, VideoClipsBuilder, parse_clip_filename

_YUV_RE = re.compile(r"^(?P<name>.+?)_(?P<w>\d+)x(?P<h>\d+)_(?P<fps>\d+(?:\.\d+)?)fps_420_8bit_YUV\.yuv$", re.I)


def parse_uvg_filename(path: str) -> ClipSource | None:
    """``Beauty_1920x1080_120fps_420_8bit_YUV.yuv`` -> ClipSource("Beauty", path, "yuv", 1920, 1080, 120.0)."""
    return parse_clip_filename(path, _YUV_RE, "uvg", "NAME_WxH_FPSfps_420_8bit_YUV.yuv")


class Uvg(VideoClipsBuilder):
    """UVG (Ultra Video Group, Tampere University) raw test sequences from a local directory."""

    name = "uvg"
    DESCRIPTION = (
        "UVG test sequences (8-bit 4:2:0 raw YUV, BT.709 limited range, converted to RGB) read from "
        "a local directory; one record per chunk of frames."
    )
    HOMEPAGE = "https://ultravideo.fi/dataset.html"
    CITATION = """@inproceedings{mercat2020uvg,
  title={UVG dataset: 50/120fps 4K sequences for video codec analysis and development},
  author={Mercat, Alexandre and Viitanen, Marko and Vanne, Jarno},
  booktitle={Proceedings of the 11th ACM Multimedia Systems Conference},
  pages={297--302},
  year={2020}
}"""
    EXPECTED_FILES = "NAME_WxH_FPSfps_420_8bit_YUV.yuv or video files such as NAME.mp4"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download the 8-bit YUV sequences (e.g. Beauty_1920x1080_120fps_420_8bit_YUV_RAW.7z) from "
        "https://ultravideo.fi/dataset.html, extract the .yuv files into the manual directory "
        "(keep the official file names; .mp4 files are accepted too)."
    )
    parse_filename = staticmethod(parse_uvg_filename)
