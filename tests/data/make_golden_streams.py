"""Writes tests/data/golden_{t2v,flf2v,i2v}.gvc and their decoded frames (``*_decoded.npy``).

Run once with the code *before* a refactor (``git worktree add /tmp/old REV`` and run this file
from there with ``--out`` pointing here): ``tests/test_golden_streams.py`` then checks that
today's encoder writes the same bytes and today's decoder the same frames. The files in this
folder were written at commit 18f2101 (the code issue 23 was filed against) on the 2-core AVX2
EPYC machine. Only public API calls that exist at 18f2101 and now are used.

    python tests/data/make_golden_streams.py --out tests/data
"""
import argparse
import os

import numpy as np

CLIP_FRAMES, CLIP_BOX = 9, (100, 148, 300, 364)  # bikes frames 0-8, rows 100:148, cols 300:364 -> 64x48
SETTINGS = {  # small but exercising each variant's side payloads (anchors, tail residual, tail atoms)
    "t2v": dict(variant="t2v"),
    "flf2v": dict(variant="flf2v", anchor_quality=20),
    "i2v": dict(variant="i2v", anchor_quality=20, tail_atoms=16),
}
COMMON = dict(gop_frames=5, steps=6, tail=2, atoms=8, codebook_size=1024, seed=3)


def golden_clip() -> np.ndarray:
    from gvc_jax.io.sample_clips import sample_clip_path
    from gvc_jax.io.video_reader import read_video

    frames = read_video(sample_clip_path("bikes"), max_frames=CLIP_FRAMES)[0]
    r0, r1, c0, c1 = CLIP_BOX
    return np.ascontiguousarray(frames[:, r0:r1, c0:c1, :3]).astype(np.uint8)


def main():
    import gvc_jax  # noqa: F401
    from gvc_jax import api

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    video = golden_clip()
    for name, kw in SETTINGS.items():
        result = api.encode_full(video, None, fps=25.0, **COMMON, **kw)
        with open(os.path.join(args.out, f"golden_{name}.gvc"), "wb") as f:
            f.write(result.stream)
        decoded = api.decode(result.stream)
        frames = getattr(decoded, "video", decoded)
        np.save(os.path.join(args.out, f"golden_{name}_decoded.npy"), np.asarray(frames))
        print(name, len(result.stream), "bytes", np.asarray(frames).shape)


if __name__ == "__main__":
    main()
