"""``python -m gvc_jax.decode IN.gvc -o OUT.mp4``: rebuild a video from a .gvc stream.

The decoder replays the encoder's trajectory with the atoms named in the stream; it checks
the model fingerprint and each GOP's final-latent hash (a mismatch is reported as drift).
"""
from __future__ import annotations

import gvc_jax  # noqa: F401  (environment before jax)

import argparse
import os
import sys
import time

from gvc_jax import cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gvc_jax.decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="a .gvc stream")
    p.add_argument("-o", "--output", required=True, help="output video (.mp4, .y4m, .npy, or a directory for PNG frames)")
    cli.add_model_args(p)
    p.add_argument("--reference", default=None, metavar="VIDEO", help="report PSNR, MS-SSIM and LPIPS against this video")
    p.add_argument("--strict", action="store_true", help="fail (exit 2) if a GOP's decoded latent differs from the encoder's")
    p.add_argument("--ignore-fingerprint", action="store_true", help="decode even if the model differs from the encoder's")
    return p


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    from gvc_jax.codec.pipeline import decode_video
    from gvc_jax.io import read_video, write_video
    from gvc_jax.metrics import bpp, evaluate
    from gvc_jax.models.registry import resolve_model

    cli.check_output_path(args.output)
    with open(args.input, "rb") as f:
        stream = f.read()
    model = resolve_model(args.model, quiet=args.quiet)
    t0 = time.perf_counter()
    result = decode_video(stream, model, check_fingerprint=not args.ignore_fingerprint, strict=args.strict,
                          progress=cli.progress_printer(args.quiet))
    seconds = time.perf_counter() - t0
    write_video(args.output, result.video, result.fps)
    frames, height, width = result.video.shape[:3]
    drifted = [g.index for g in result.gops if g.drift]
    if drifted:
        print(f"warning: GOPs {drifted} decoded to a latent that differs from the encoder's "
              f"(different platform or model?); the video may differ from the encoder's reconstruction",
              file=sys.stderr)
    report = {"input": args.input, "output": args.output, "model": model.name, "frames": frames,
              "width": width, "height": height, "fps": result.fps, "bytes": len(stream),
              "bpp": bpp(len(stream), frames, width, height), "seconds": seconds, "drifted_gops": drifted}
    if args.reference:
        ref, _ = read_video(args.reference, max_frames=frames, resize=(width, height))
        if ref.shape != result.video.shape:
            raise ValueError(f"reference has shape {ref.shape}, decoded video {result.video.shape}")
        report.update(evaluate(ref, result.video))
    cli.emit_report(report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_main(main))
