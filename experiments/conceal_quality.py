"""How good is ``decode --conceal``? PSNR / LPIPS of concealed GOPs on the sample clip.

For each variant the demo's settings code Big Buck Bunny (default: 49 frames at 256x144, GOPs of
17 frames, so three GOPs in every variant) with the embedded default model. The stream is then
damaged twice: one bit flipped in the middle of GOP 1's record, and the file cut in the middle of
GOP 1's record. Each damaged stream is decoded with concealment and compared, GOP by GOP (the
frames each GOP adds to the output), with the original and with the intact decode.

    .venv/bin/python -m experiments.conceal_quality --json results/conceal_quality.json
"""
from __future__ import annotations

import argparse
import time

import gvc_jax  # noqa: F401
from gvc_jax import cli


def _gop_ranges(plan):
    """GOP -> the output frames it adds (shared frames counted once, padding dropped)."""
    out = {}
    for span in plan.spans:
        skip, count = plan.new_frames(span)
        out[span.index] = (span.start + skip, span.start + skip + count)
    return out


def main(argv=None) -> int:
    from gvc_jax.api import CodecOptions
    from gvc_jax.codec.format import bitstream
    from gvc_jax.codec.session import decode_video, encode_video, plan_for
    from gvc_jax.demo import DEMO_SETTINGS
    from gvc_jax.io.sample_clips import sample_clip_path
    from gvc_jax.io.video_reader import read_video
    from gvc_jax.metrics import evaluate
    from gvc_jax.models.registry import resolve_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clip", default="bigbuckbunny")
    p.add_argument("--frames", type=int, default=49)
    p.add_argument("--gop-frames", type=int, default=17)
    p.add_argument("--resize", type=cli.parse_size, default=(256, 144))
    p.add_argument("--variants", nargs="+", default=list(DEMO_SETTINGS))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    video, fps = read_video(sample_clip_path(args.clip), max_frames=args.frames, resize=args.resize)
    model = resolve_model(None, quiet=True)
    frames, height, width = video.shape[:3]
    rows = []
    for variant in args.variants:
        options = CodecOptions(variant=variant, gop_frames=args.gop_frames, **DEMO_SETTINGS[variant])
        sampler = options.sampler(height, width, args.gop_frames)
        t0 = time.perf_counter()
        enc = encode_video(video, fps, model, sampler, gop_frames=args.gop_frames, variant=options.variant_object())
        print(f"{variant}: encoded {len(enc.stream)} B in {time.perf_counter() - t0:.0f} s", flush=True)
        _, plan = plan_for(model, variant, frames, args.gop_frames)
        ranges = _gop_ranges(plan)
        _, records = bitstream.open_stream(enc.stream)
        start, length = (int(v) for v in records._spans[1])
        flipped = bytearray(enc.stream)
        flipped[start + length // 2] ^= 0x10
        for damage, data in (("flip GOP 1", bytes(flipped)), ("cut in GOP 1", enc.stream[:start + length // 2])):
            t0 = time.perf_counter()
            dec = decode_video(data, model, conceal=True)
            seconds = time.perf_counter() - t0
            for g, (a, b) in ranges.items():
                kind = "concealed" if g in dec.concealed else "affected" if g in dec.affected else "intact"
                got = evaluate(video[a:b], dec.video[a:b], metrics=("psnr", "lpips"))
                ref = evaluate(video[a:b], enc.video[a:b], metrics=("psnr", "lpips"))
                row = {"variant": variant, "damage": damage, "gop": g, "frames": f"{a}-{b - 1}", "kind": kind,
                       "psnr": got["psnr"], "lpips": got["lpips"], "psnr_intact": ref["psnr"],
                       "lpips_intact": ref["lpips"], "decode_s": seconds}
                rows.append(row)
                print(f"  {damage:13s} GOP {g} ({kind:9s}): PSNR {got['psnr']:.2f} dB (intact {ref['psnr']:.2f}), "
                      f"LPIPS {got['lpips']:.3f} (intact {ref['lpips']:.3f})", flush=True)
    if args.json:
        cli.write_json(args.json, {"clip": args.clip, "frames": frames, "size": f"{width}x{height}",
                                   "gop_frames": args.gop_frames, "model": model.name, "rows": rows})
    return 0


if __name__ == "__main__":
    cli.entry_point(main)
