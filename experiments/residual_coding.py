"""Real I2V tail residuals and how well each coder compresses them.

    python -m experiments.residual_coding --capture out/residuals.npz     # run the codec, keep residuals
    python -m experiments.residual_coding --residuals out/residuals.npz   # compare the coders

``--capture`` encodes shipped sample clips with the default model in I2V (demo settings) and keeps
every GOP's tail residual ``target - decoded`` on the last latent frame (what ``I2V.make_side``
codes). The comparison codes each residual with the published scheme (8-bit per-channel max-abs
quantiser + zlib; also at fewer bits, its natural knob) and with ``codec.payloads.residual`` at the step
that gives the same MSE, and prints the mean bytes of both; then our bytes at a few steps.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import numpy as np

import gvc_jax  # noqa: F401


def capture(path: str, clips, frames: int, size) -> None:
    from gvc_jax.api import CodecOptions
    from gvc_jax.codec.gop import variants
    from gvc_jax.codec.session import encode_video
    from gvc_jax.io.sample_clips import sample_clip_path
    from gvc_jax.io.video_reader import read_video
    from gvc_jax.models.registry import resolve_model

    kept = []

    @dataclasses.dataclass
    class Capturing(variants.I2V):
        def make_side(self, span, latent, target):
            kept.append(np.asarray(target[-1], np.float32) - np.asarray(latent[-1], np.float32))
            return super().make_side(span, latent, target)

    model = resolve_model(None, quiet=True)
    opts = CodecOptions(variant="i2v", tail_atoms=128)
    base = opts.variant_object()
    for clip in clips:
        video, fps = read_video(sample_clip_path(clip), max_frames=frames, resize=size)
        gop = opts.gop_frames_for(video.shape[0])
        t0 = time.perf_counter()
        encode_video(video, fps, model, opts.sampler(video.shape[1], video.shape[2], gop), gop_frames=gop,
                     variant=Capturing(**dataclasses.asdict(base)))
        print(f"{clip}: {len(kept)} residuals so far ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    np.savez_compressed(path, *kept)
    print(f"wrote {len(kept)} residuals of shape {kept[0].shape} to {path}")


def maxabs_zlib(r: np.ndarray, bits: int):
    """The published scheme with ``bits`` per sample (it publishes 8): per-channel max-abs scales
    (float32), levels in [-(2^(bits-1) - 1), 2^(bits-1) - 1] as int8, zlib level 9."""
    import zlib

    top = 2 ** (bits - 1) - 1
    scale = np.max(np.abs(r.reshape(-1, r.shape[-1])), axis=0).astype(np.float32)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(r / scale * top), -top, top).astype(np.int8)
    return scale.tobytes() + zlib.compress(q.tobytes(), 9), (q.astype(np.float32) * scale / top)


def compare(path: str, bit_depths) -> None:
    from gvc_jax.codec.payloads import residual as R

    data = np.load(path)
    residuals = [data[n] for n in data.files]
    print(f"{len(residuals)} residuals of shape {residuals[0].shape}, std "
          f"{', '.join(f'{r.std():.3f}' for r in residuals)}\n")
    print("| published scheme at | MSE | its bytes | ours at equal MSE (step) | saving |")
    print("|---|---|---|---|---|")
    for bits in bit_depths:
        base = ours = 0
        mses, steps = [], []
        for r in residuals:
            payload, rec = maxabs_zlib(r, bits)
            mse = float(np.mean((rec - r) ** 2))
            step = R.step_for_mse(r, mse)
            coded = R.encode_residual(r, step)
            assert float(np.mean((R.decode_residual(coded, r.shape) - r) ** 2)) <= mse * 1.001
            base, ours = base + len(payload), ours + len(coded)
            mses.append(mse)
            steps.append(step)
        n = len(residuals)
        print(f"| {bits} bits{' (published)' if bits == 8 else ''} | {np.mean(mses):.2e} | {base / n:,.0f} B | "
              f"{ours / n:,.0f} B ({np.mean(steps):.3f}) | {100 * (1 - ours / base):.1f} % |")
    print("\n| our step | MSE | bytes |\n|---|---|---|")
    for step in (0.05, 0.1, 0.25, 0.5, 1.0):
        sizes = [len(R.encode_residual(r, step)) for r in residuals]
        mse = np.mean([np.mean((R.reconstruct(r, step) - r) ** 2) for r in residuals])
        print(f"| {step} | {mse:.2e} | {np.mean(sizes):,.0f} B |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--capture", metavar="NPZ", help="encode the sample clips in I2V and save the residuals")
    p.add_argument("--residuals", metavar="NPZ", help="compare the coders on saved residuals")
    p.add_argument("--clips", nargs="+", default=["bigbuckbunny", "bikes"])
    p.add_argument("--frames", type=int, default=65)
    p.add_argument("--bits", type=int, nargs="+", default=[8, 7, 6, 5, 4, 3, 2],
                   help="bit depths of the published scheme to compare at (it publishes 8)")
    args = p.parse_args(argv)
    if not (args.capture or args.residuals):
        p.error("give --capture and/or --residuals")
    if args.capture:
        capture(args.capture, args.clips, args.frames, (256, 144))
    if args.residuals:
        compare(args.residuals, args.bits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
