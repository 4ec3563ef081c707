"""Peak memory of encode and decode against video length: the codec streams GOP by GOP.

Builds an N-frame clip from the shipped Big Buck Bunny frames (played forwards and backwards
until N frames, resized), writes it as a lossless .npy and as H.264 .mp4, then runs the real
command lines in fresh processes and reads each one's peak RSS from ``wait4``:

    python -m gvc_jax.encode clip.mp4 -o clip.gvc --decoded rec.mp4 ...
    python -m gvc_jax.decode clip.gvc -o dec.mp4 ...

    python experiments/bench_memory.py --frames 33 330 --json results/bench_memory.json

The claim under test: the 330-frame peak exceeds the 33-frame peak by less than the raw size of
the 330-frame video (F x H x W x 3 bytes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def make_clip(frames: int, size) -> np.ndarray:
    from gvc_jax.io.sample_clips import sample_clip_path
    from gvc_jax.io.video_reader import read_video

    src, _ = read_video(sample_clip_path("bigbuckbunny"), resize=size)
    order = np.concatenate([np.arange(len(src)), np.arange(len(src) - 2, 0, -1)])
    return src[np.resize(order, frames)]


def run_measured(cmd) -> dict:
    """Run ``cmd``; -> seconds, exit status and peak RSS (MiB) of that process."""
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    rc = os.waitstatus_to_exitcode(status)
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}): {err.strip().splitlines()[-1:]}")
    return {"seconds": time.perf_counter() - t0, "peak_rss_mib": usage.ru_maxrss / 1024}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, nargs="+", default=[33, 330])
    p.add_argument("--size", default="256x144")
    p.add_argument("--model", default=None, help="model dir or preset:NAME (default: the embedded model)")
    p.add_argument("--codec-args", default="-M 16 --steps 4 --tail 1",
                   help="encoder options (default %(default)r: few steps, the memory does not depend on them)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))
    model = ["--model", args.model] if args.model else []
    from gvc_jax.io.video_writer import write_video

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.frames:
            clip = make_clip(n, (w, h))
            src = os.path.join(tmp, f"clip{n}.mp4")
            write_video(src, clip, 16.0)
            raw = clip.nbytes
            del clip
            gvc, rec, dec = (os.path.join(tmp, f"{n}{s}") for s in (".gvc", "_rec.mp4", "_dec.mp4"))
            enc = run_measured([sys.executable, "-m", "gvc_jax.encode", src, "-o", gvc, "--decoded", rec, "--quiet",
                                *args.codec_args.split(), *model])
            decd = run_measured([sys.executable, "-m", "gvc_jax.decode", gvc, "-o", dec, "--quiet", *model])
            row = {"frames": n, "size": args.size, "raw_video_mib": raw / 2**20, "gvc_bytes": os.path.getsize(gvc),
                   "encode": enc, "decode": decd}
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
              "codec_args": args.codec_args, "model": args.model or "embedded default", "runs": rows}
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        for side in ("encode", "decode"):
            growth = b[side]["peak_rss_mib"] - a[side]["peak_rss_mib"]
            result[f"{side}_peak_growth_mib"] = growth
            result[f"{side}_growth_below_raw_video"] = bool(growth < b["raw_video_mib"])
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
