"""Where one GOP's time goes, plain against turbo: VAE encode, the coded trajectory (encoder side:
DiT calls and codebook search), VAE decode.

    python experiments/bench_mr_parts.py [--size 256x144] [--frames 33]

Default model, Big Buck Bunny; each part timed with the programs compiled (one warm-up call),
median of 3, wall and process CPU seconds. The turbo preset changes only the trajectory (its stage
plan and refresh rule), so the VAE parts bound what it can save on a whole GOP. The last line gives
turbo / plain CPU time of the trajectory, of an encoder's GOP without a sink (VAE encode +
trajectory) and of a decoder's GOP (trajectory + VAE decode, with the encoder's trajectory time).
``--vae-convs fast``: the VAE's fast conv path (``registry.with_execution``).
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

import gvc_jax  # noqa: F401
from gvc_jax.api import CodecOptions, get_model
from gvc_jax.codec.gop.engine import GopEngine
from gvc_jax.io.sample_clips import sample_clip_path
from gvc_jax.io.video_reader import read_video


def timed(fn, runs: int = 3) -> dict:
    """Median (wall s, CPU s) of ``runs`` calls after one warm-up call."""
    jax.block_until_ready(fn())
    samples = []
    for _ in range(runs):
        c, w = time.process_time(), time.perf_counter()
        jax.block_until_ready(fn())
        samples.append((time.perf_counter() - w, time.process_time() - c))
    wall, cpu = sorted(samples)[runs // 2]
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}


def parts(name: str, opts, model, frames: np.ndarray) -> dict:
    """One schedule's GOP, part by part."""
    height, width = frames.shape[1:3]
    sampler = opts.sampler(height, width, len(frames), model.config.vae.temporal_stride, model)
    eng = GopEngine(model, sampler, height, width, len(frames))
    target = eng.target_latents([frames])[0]

    def trajectory():
        return eng.run_many([0], [eng.unconditioned()], [None], targets=[target], picks=[None])[0][0]

    latent = trajectory()
    return {"schedule": name, "mr": sampler.stages.spec() if sampler.stages else "off",
            "dit_calls": eng.trajectory.dit_calls, "vae_encode": timed(lambda: eng.target_latents([frames])[0]),
            "trajectory": timed(trajectory), "vae_decode": timed(lambda: eng.frames_many([latent])[0])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="256x144")
    p.add_argument("--frames", type=int, default=33, help="one GOP of this many frames (4k+1)")
    p.add_argument("--vae-convs", default="exact", choices=("exact", "fast"),
                   help="the VAE's conv path (default exact)")
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    video, _ = read_video(sample_clip_path("bigbuckbunny"), max_frames=args.frames, resize=(width, height))
    model = get_model(None, vae_convs=args.vae_convs)
    rows = [parts(name, opts, model, np.asarray(video)) for name, opts in
            (("plain", CodecOptions()), ("turbo", CodecOptions.preset("turbo")))]
    for r in rows:
        r["vae_convs"] = args.vae_convs
        print(json.dumps(r), flush=True)
    cpu = [{k: r[k]["cpu_s"] for k in ("vae_encode", "trajectory", "vae_decode")} for r in rows]
    enc = [c["vae_encode"] + c["trajectory"] for c in cpu]  # an encoder with no sink: VAE encode + trajectory
    dec = [c["trajectory"] + c["vae_decode"] for c in cpu]  # (the encoder's trajectory: an upper bound)
    print(json.dumps({"vae_convs": args.vae_convs, "turbo_over_plain_cpu": {
        "trajectory": round(cpu[1]["trajectory"] / cpu[0]["trajectory"], 3), "encode_gop": round(enc[1] / enc[0], 3),
        "decode_gop": round(dec[1] / dec[0], 3)}}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
