"""tensorflow-datasets builder for the HEVC common-test-condition class B sequences (1920x1080),
read from a local directory (never downloaded).

Accepted files (anywhere under the manual directory):

- raw 8-bit 4:2:0 YUV named as JCT-VC distributes them, ``NAME_WxH_FPS.yuv``, e.g.
  ``BasketballDrive_1920x1080_50.yuv``, ``BQTerrace_1920x1080_60.yuv``, ``Cactus_1920x1080_50.yuv``,
  ``Kimono1_1920x1080_24.yuv``, ``ParkScene_1920x1080_24.yuv`` (size and frame rate come from the
  name; clip name ``NAME``);
- video files (``.mp4 .mkv .mov .avi .webm .y4m``): clip name = the file name up to ``_WxH`` if
  present, else the whole stem.

Other files are ignored (``.yuv`` files with another pattern with a warning). The class B
sequences are 8-bit; every one has at least 240 frames, so the 96-frame protocol
(``experiments/rd.py --protocol ctc96``) reads the first 96 of each. Configs and record layout:
:mod:`experiments.datasets.common`.
"""
from __future__ import annotations

import re

from experiments.datasets.common import ClipSource, VideoClipsBuilder, parse_clip_filename

HEVC_B = ("BasketballDrive", "BQTerrace", "Cactus", "Kimono1", "ParkScene")
_YUV_RE = re.compile(r"^(?P<name>[A-Za-z0-9]+)_(?P<w>\d+)x(?P<h>\d+)_(?P<fps>\d+(?:\.\d+)?)(?:fps)?\.yuv$", re.I)


def parse_hevcb_filename(path: str) -> ClipSource | None:
    """``Cactus_1920x1080_50.yuv`` -> ClipSource("Cactus", path, "yuv", 1920, 1080, 50.0)."""
    return parse_clip_filename(path, _YUV_RE, "hevcb", "NAME_WxH_FPS.yuv")


class HevcB(VideoClipsBuilder):
    """HEVC CTC class B (1080p) test sequences from a local directory."""

    name = "hevcb"
    DESCRIPTION = (
        "HEVC common-test-condition class B sequences (1920x1080, 8-bit 4:2:0 raw YUV, converted to RGB "
        "with BT.709 limited range) read from a local directory; one record per chunk of frames."
    )
    HOMEPAGE = "https://www.itu.int/wftp3/av-arch/jctvc-site/"
    CITATION = """@techreport{bossen2013ctc,
  title={Common test conditions and software reference configurations (JCTVC-L1100)},
  author={Bossen, Frank},
  institution={Joint Collaborative Team on Video Coding (JCT-VC)},
  year={2013}
}"""
    EXPECTED_FILES = "NAME_WxH_FPS.yuv (e.g. Cactus_1920x1080_50.yuv) or video files such as NAME.mp4"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Obtain the JCT-VC class B test sequences (BasketballDrive, BQTerrace, Cactus, Kimono1, ParkScene; "
        "distributed to JCT-VC / JVET participants, e.g. from the jvet ftp's test-sequence area) and put the "
        ".yuv files into the manual directory under their official names (NAME_1920x1080_FPS.yuv)."
    )
    parse_filename = staticmethod(parse_hevcb_filename)
