"""Benchmark: GOPs per second on 1, 2 and 4 devices (the ``gop`` mesh axis, gvc_jax.parallel).

    python -m experiments.bench_parallel [--devices 1 2 4] [--gops 4] [--model DIR] [--json F]

Encodes the first ``--gops`` GOPs of Big Buck Bunny at 256x144 (33-frame GOPs, default
settings) once per device count. Each count runs in one process that sees all the devices: a
warm-up encode of one chunk (one GOP per device) compiles the programs, then the whole clip is
timed. Also checks that every count wrote the same bytes. On a CPU host the devices are faked
with ``--xla_force_host_platform_device_count`` (set here when JAX has not started yet) and
share the host's cores, so the speed-up is bounded by the cores, not the device count.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--gops", type=int, default=4)
    p.add_argument("--model", default=None, help="converted model directory (default: the embedded model)")
    p.add_argument("--size", default="256x144")
    p.add_argument("--decode", action="store_true", help="also time decoding on each count")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if "jax" not in sys.modules and "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   f" --xla_force_host_platform_device_count={max(args.devices)}").strip()
    import jax

    import gvc_jax  # noqa: F401
    from gvc_jax.api import CodecOptions
    from gvc_jax.cli import parse_size
    from gvc_jax.codec.session import decode_video, encode_video
    from gvc_jax.io.sample_clips import sample_clip_path
    from gvc_jax.io.video_reader import read_video
    from gvc_jax.models.registry import resolve_model

    w, h = parse_size(args.size)
    frames = 32 * args.gops + 1
    video, fps = read_video(sample_clip_path("bigbuckbunny"), resize=(w, h), max_frames=frames)
    if len(video) < frames:
        raise SystemExit(f"the clip has only {len(video)} frames")
    model = resolve_model(args.model, quiet=True)
    opts = CodecOptions()
    gop = 33
    sampler = opts.sampler(h, w, gop, model.config.vae.temporal_stride)
    rows, digests = [], set()
    for n in args.devices:
        t0 = time.perf_counter()
        encode_video(video[:32 * n + 1], fps, model, sampler, gop_frames=gop, devices=n)  # compile: one chunk
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        enc = encode_video(video, fps, model, sampler, gop_frames=gop, devices=n)
        seconds = time.perf_counter() - t0
        digests.add(hashlib.sha256(enc.stream).hexdigest())
        row = {"devices": n, "gops": args.gops, "encode_s": seconds, "encode_gops_per_s": args.gops / seconds,
               "warmup_s": warm, "bytes": len(enc.stream)}
        if args.decode:
            t0 = time.perf_counter()
            dec = decode_video(enc.stream, model, strict=True, devices=n)
            row["decode_s"] = time.perf_counter() - t0
            row["decode_gops_per_s"] = args.gops / row["decode_s"]
            assert (dec.video == enc.video).all()
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"machine": f"{os.cpu_count()} CPU cores, backend {jax.default_backend()}, "
                         f"{jax.local_device_count()} {jax.devices()[0].device_kind} devices",
              "model": model.name, "size": args.size, "same_bytes_on_every_count": len(digests) == 1, "rows": rows}
    base = rows[0]["encode_s"]
    for r in rows:
        r["speedup"] = base / r["encode_s"]
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
