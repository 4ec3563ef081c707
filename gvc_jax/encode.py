"""``python -m gvc_jax.encode INPUT -o OUT.gvc``: compress a video into a .gvc stream.

The stream is written atomically. With ``--eval`` the reconstruction the decoder will produce
(the encoder knows it exactly) is compared with the input: PSNR, MS-SSIM, LPIPS.
"""
from __future__ import annotations

import gvc_jax  # noqa: F401  (environment before jax)

import argparse
import os
import sys
import time

from gvc_jax import cli
from gvc_jax.codec import schedule


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gvc_jax.encode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="input video (mp4, mkv, y4m, gif, ...), a directory of frames, or an image")
    p.add_argument("-o", "--output", required=True, help="output .gvc file")
    cli.add_model_args(p)
    g = p.add_argument_group("rate and sampler")
    g.add_argument("-M", "--atoms", type=int, default=schedule.DEFAULT_M, help="atoms per latent frame and step (the rate knob; default %(default)s)")
    g.add_argument("-K", "--codebook-size", type=int, default=schedule.DEFAULT_K, help="codebook size (default %(default)s)")
    g.add_argument("--codebook", default=schedule.DEFAULT_CODEBOOK, choices=("hadamard", "gaussian", "rademacher"), help="atom kind (default %(default)s)")
    g.add_argument("--steps", type=int, default=schedule.DEFAULT_STEPS, help="sampling steps T (default %(default)s)")
    g.add_argument("--tail", type=int, default=schedule.DEFAULT_TAIL, help="deterministic final steps (default %(default)s)")
    g.add_argument("--g-scale", type=float, default=schedule.DEFAULT_G_SCALE, help="SDE diffusion scale (default %(default)s)")
    g.add_argument("--shift", type=float, default=None, help="time-grid shift (default: 5.0 above 480p, else 3.0)")
    g.add_argument("--seed", type=int, default=0, help="codebook / initial-noise seed (default %(default)s)")
    v = p.add_argument_group("input")
    v.add_argument("--gop-frames", type=int, default=33, help="frames per GOP, 4k+1 (default %(default)s)")
    v.add_argument("--max-frames", type=int, default=None, help="encode at most this many frames")
    v.add_argument("--start", type=int, default=0, help="first frame to encode (default 0)")
    v.add_argument("--resize", type=cli.parse_size, default=None, metavar="WxH", help="resize frames before coding")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval", action="store_true", help="report PSNR, MS-SSIM and LPIPS of the reconstruction")
    e.add_argument("--decoded", default=None, metavar="VIDEO", help="also write the reconstruction (e.g. out.mp4)")
    e.add_argument("--compare", default=None, metavar="PNG", help="also write a side-by-side image of original and decoded frames")
    return p


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    from gvc_jax.codec.pipeline import encode_video
    from gvc_jax.io import atomic_write_bytes, read_video, save_side_by_side, write_video
    from gvc_jax.metrics import bpp, evaluate
    from gvc_jax.models.registry import resolve_model

    for path in (args.output, args.decoded, args.compare):
        if path:
            cli.check_output_path(path)
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError("--max-frames must be >= 1")
    video, fps = read_video(args.input, max_frames=args.max_frames, start=args.start, resize=args.resize)
    model = resolve_model(args.model, quiet=args.quiet)
    frames, height, width = video.shape[:3]
    from gvc_jax.models.vae import latent_frames

    sampler = schedule.SamplerConfig(
        steps=args.steps, tail=args.tail, g_scale=args.g_scale,
        shift=args.shift if args.shift is not None else schedule.default_shift(height, width),
        K=args.codebook_size, atoms_per_frame=(args.atoms,) * latent_frames(args.gop_frames),
        codebook=args.codebook, seed=args.seed)
    t0 = time.perf_counter()
    result = encode_video(video, fps, model, sampler, gop_frames=args.gop_frames,
                          progress=cli.progress_printer(args.quiet))
    seconds = time.perf_counter() - t0
    atomic_write_bytes(args.output, result.stream)
    size = os.path.getsize(args.output)
    report = {
        "input": args.input, "output": args.output, "model": model.name, "frames": frames,
        "width": width, "height": height, "fps": fps, "gops": len(result.gops), "bytes": size,
        "bpp": bpp(size, frames, width, height), "kbps": 8 * size / 1000 / (frames / fps),
        "seconds": seconds, "seconds_per_gop": [round(g.seconds, 3) for g in result.gops],
        "latent_mse": [g.latent_mse for g in result.gops],
    }
    if args.eval:
        report.update(evaluate(video, result.video))
    if args.decoded:
        write_video(args.decoded, result.video, fps)
    if args.compare:
        save_side_by_side(args.compare, video, result.video)
    cli.emit_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
