"""What bf16 costs: the same GOP coded with the DiT in float32 and in bfloat16 (weights + matmuls).

    python -m experiments.bf16_error [--model DIR|preset:NAME] [--frames 33] [--size 256x144]

1. Encode the sample clip in float32 (the reference).
2. Decode that stream with the bf16 DiT: how far the final latent moves from the encoder's
   (relative RMS, per GOP) and what that does to the frames (PSNR of bf16 decode against the
   fp32 decode, and both against the original). This is the cross-precision drift a user gets by
   decoding on a different precision than the encoder used.
3. Encode and decode entirely in bf16 (what ``--dtype auto`` does on an accelerator): bytes and
   quality against the original, next to the fp32 run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import gvc_jax  # noqa: F401


def main(argv=None) -> int:
    from gvc_jax.api import CodecOptions
    from gvc_jax.cli import parse_size
    from gvc_jax.codec.session import decode_video, encode_video
    from gvc_jax.io.sample_clips import sample_clip_path
    from gvc_jax.io.video_reader import read_video
    from gvc_jax.metrics import evaluate, psnr
    from gvc_jax.models.registry import resolve_model, with_execution

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--clip", default="bigbuckbunny")
    p.add_argument("--frames", type=int, default=33)
    p.add_argument("--size", type=parse_size, default=(256, 144), metavar="WxH")
    p.add_argument("--json")
    args = p.parse_args(argv)

    video, fps = read_video(sample_clip_path(args.clip), max_frames=args.frames, resize=args.size)
    f32 = with_execution(resolve_model(args.model, quiet=True), dtype="float32")
    b16 = with_execution(f32, dtype="bfloat16")
    opts = CodecOptions()
    gop = opts.gop_frames_for(video.shape[0])
    sampler = opts.sampler(video.shape[1], video.shape[2], gop)
    out = {"model": f32.name, "clip": args.clip, "frames": int(video.shape[0]), "size": list(args.size)}

    t0 = time.perf_counter()
    enc32 = encode_video(video, fps, f32, sampler, gop_frames=gop)
    out["fp32_encode_s"] = time.perf_counter() - t0
    dec32 = decode_video(enc32.stream, f32)
    dec_cross = decode_video(enc32.stream, b16)
    out["cross_drifted_gops"] = sum(g.drift for g in dec_cross.gops)
    out["cross_psnr_vs_fp32_decode"] = psnr(dec32.video, dec_cross.video)
    # the first GOP's final latent, fp32 encoder vs a bf16 decoder reading the same picks
    from gvc_jax.codec.gop.engine import GopEngine

    e32 = GopEngine(f32, sampler, video.shape[1], video.shape[2], gop)
    e16 = GopEngine(b16, sampler, video.shape[1], video.shape[2], gop)
    target = e32.target_latents([video[:gop]])[0]
    [(x32, picks)] = e32.run_many([0], [e32.unconditioned()], [None], targets=[target], picks=[None])
    [(x16, _)] = e16.run_many([0], [e16.unconditioned()], [None], targets=[None], picks=[picks])
    a, b, t = (np.asarray(v, np.float64) for v in (x32, x16, target))
    out["gop0_latent_rel_rms_bf16_vs_fp32"] = float(np.sqrt(np.mean((a - b) ** 2) / np.mean(a ** 2)))
    out["gop0_latent_rel_rms_fp32_vs_target"] = float(np.sqrt(np.mean((a - t) ** 2) / np.mean(t ** 2)))
    out["fp32"] = {"bytes": len(enc32.stream), **evaluate(video, dec32.video, metrics=("psnr", "lpips"))}
    out["cross_decode"] = evaluate(video, dec_cross.video, metrics=("psnr", "lpips"))

    t0 = time.perf_counter()
    enc16 = encode_video(video, fps, b16, sampler, gop_frames=gop)
    out["bf16_encode_s"] = time.perf_counter() - t0
    dec16 = decode_video(enc16.stream, b16)
    out["bf16"] = {"bytes": len(enc16.stream), "bit_exact": bool((dec16.video == enc16.video).all()),
                   **evaluate(video, dec16.video, metrics=("psnr", "lpips"))}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
