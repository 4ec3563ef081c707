"""Anchor still codecs on real frames: bytes against PSNR and LPIPS, and BD-rate against x265.

    python -m experiments.anchor_codecs --size 256x144 --out docs/anchor_codecs_256x144.json

Frames: the first, middle and last of each shipped sample clip (Big Buck Bunny, bikes; the
frames FLF2V / I2V code as anchors) and three scikit-image stills, all resized to ``--size``.
Every codec in ``codec.payloads.anchors`` that this machine has is run at each ``--qualities`` value;
bytes are whole payloads (what a stream pays), PSNR on RGB, LPIPS AlexNet. Prints one markdown
table per metric and the BD-rate of every codec against x265 (negative: fewer bytes at equal
quality), measured over the range of qualities both cover.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import gvc_jax  # noqa: F401


def test_frames(size):
    import skimage.data
    from PIL import Image

    from gvc_jax.io.sample_clips import sample_clip_path
    from gvc_jax.io.video_reader import read_video

    w, h = size
    frames = {}
    for clip in ("bigbuckbunny", "bikes"):
        video, _ = read_video(sample_clip_path(clip), max_frames=65, resize=size)
        for i in (0, len(video) // 2, len(video) - 1):
            frames[f"{clip}[{i}]"] = video[i]
    for name in ("astronaut", "coffee", "chelsea"):
        img = getattr(skimage.data, name)()
        frames[name] = np.asarray(Image.fromarray(img).convert("RGB").resize((w, h), Image.BICUBIC))
    return frames


def main(argv=None) -> int:
    from gvc_jax.cli import parse_size
    from gvc_jax.codec.payloads import anchors as A
    from gvc_jax.metrics import lpips_per_frame, psnr

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=parse_size, default=(256, 144), metavar="WxH")
    p.add_argument("--qualities", type=int, nargs="+", default=[10, 20, 30, 40, 50, 60, 70])
    p.add_argument("--codecs", nargs="+", default=list(A.ANCHOR_CODEC_NAMES), choices=A.ANCHOR_CODEC_NAMES)
    p.add_argument("--out", help="write the measurements as JSON")
    args = p.parse_args(argv)

    frames = test_frames(args.size)
    names = list(frames)
    ref = np.stack([frames[n] for n in names])
    results = {}
    for codec in args.codecs:
        if not A.ANCHOR_CODECS[codec].available():
            print(f"{codec}: not available here, skipped", file=sys.stderr)
            continue
        for q in args.qualities:
            t0 = time.perf_counter()
            payloads = [A.pack_anchor(codec, q, frames[n]) for n in names]
            t_enc = time.perf_counter() - t0
            t0 = time.perf_counter()
            dec = np.stack([A.unpack_anchor(b, *args.size[::-1]) for b in payloads])
            t_dec = time.perf_counter() - t0
            results[(codec, q)] = {
                "bytes": float(np.mean([len(b) for b in payloads])),
                "psnr": float(np.mean([psnr(ref[i], dec[i]) for i in range(len(names))])),
                "lpips": float(np.mean(lpips_per_frame(ref, dec))),
                "encode_ms": 1000 * t_enc / len(names), "decode_ms": 1000 * t_dec / len(names)}
            r = results[(codec, q)]
            print(f"{codec} q={q}: {r['bytes']:.0f} B  PSNR {r['psnr']:.2f}  LPIPS {r['lpips']:.4f}", file=sys.stderr)

    codecs = [c for c in args.codecs if (c, args.qualities[0]) in results]
    w, h = args.size
    print(f"{len(names)} frames at {w}x{h}: {', '.join(names)}\n")
    for metric, fmt in (("bytes", "{:,.0f}"), ("psnr", "{:.2f}"), ("lpips", "{:.4f}"), ("encode_ms", "{:.0f}")):
        print(f"mean {metric}\n\n| codec | " + " | ".join(f"q={q}" for q in args.qualities) + " |")
        print("|---|" + "---|" * len(args.qualities))
        for c in codecs:
            print(f"| {c} | " + " | ".join(fmt.format(results[(c, q)][metric]) for q in args.qualities) + " |")
        print()
    if "x265" in codecs:
        from experiments.bjontegaard import bd_rate

        print("BD-rate against x265 (bits at equal quality; negative is better)\n\n"
              "| codec | PSNR | LPIPS |\n|---|---|---|")
        base = [results[("x265", q)] for q in args.qualities]
        for c in codecs:
            if c == "x265":
                continue
            test = [results[(c, q)] for q in args.qualities]
            cells = []
            for metric, higher in (("psnr", True), ("lpips", False)):
                try:
                    bd = bd_rate([r["bytes"] for r in base], [r[metric] for r in base], [r["bytes"] for r in test],
                                 [r[metric] for r in test], higher_is_better=higher)
                    cells.append(f"{bd:+.1f} %")
                except ValueError as err:
                    cells.append(f"n/a ({err})")
            print(f"| {c} | " + " | ".join(cells) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"size": [w, h], "frames": names,
                       "results": [{"codec": c, "quality": q, **r} for (c, q), r in results.items()]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
