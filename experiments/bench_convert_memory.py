"""Peak host memory of ``python -m weights_convert release`` with the DiT in parts or whole.

Builds a diffusers-layout release whose DiT is large enough to see (random weights: Wan's 1.3B
width, 1536 x 12 heads, ffn 8960, ``--layers`` blocks; a tiny VAE, umT5, CLIP and tokenizer),
then converts it in fresh processes with ``--part-mib`` small and huge and reads each one's peak
RSS from ``wait4`` (the release is built in another process: a peak survives fork and exec, so
the measuring parent stays small). The claim under test: with parts the peak stays near one part plus the
process baseline, not the DiT's size.

    python experiments/bench_convert_memory.py --layers 10 --part-mib 64 100000 --json results/convert_memory.json
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)


def build_release(root: str, layers: int) -> int:
    """A diffusers release with a wide DiT; returns the DiT's bytes on disk (fp32)."""
    import diffusers
    import torch

    sys.path.insert(0, os.path.join(REPO, "tests"))
    from test_release import VAE_KW, make_release, tiny_tokenizer  # noqa: F401  (tiny parts of the test release)

    make_release(pathlib.Path(root), "i2v")  # tiny parts everywhere, then a wide DiT in their place
    torch.manual_seed(0)
    dit = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=12, out_channels=4,
        text_dim=32, freq_dim=256, ffn_dim=8960, num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024, image_dim=24, added_kv_proj_dim=1536)
    import shutil

    shutil.rmtree(os.path.join(root, "transformer"))
    dit.save_pretrained(os.path.join(root, "transformer"), max_shard_size="500MB")
    return sum(p.numel() * 4 for p in dit.parameters())


def peak_rss(cmd, env) -> tuple:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t0, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=10)
    p.add_argument("--part-mib", type=int, nargs="+", default=[64, 100000])
    p.add_argument("--json", default=None)
    p.add_argument("--build-only", default=None, metavar="DIR", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.build_only:  # in its own process: ru_maxrss survives fork + exec, so the parent stays small
        print(build_release(args.build_only, args.layers))
        return 0
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "HF_HUB_OFFLINE": "1"}
    rows = []
    with tempfile.TemporaryDirectory() as d:
        built = subprocess.run([sys.executable, os.path.abspath(__file__), "--layers", str(args.layers),
                                "--build-only", os.path.join(d, "rel")], env=env, capture_output=True, text=True)
        if built.returncode:
            raise RuntimeError(built.stderr[-2000:])
        dit_bytes = int(built.stdout.strip().splitlines()[-1])
        print(f"DiT: {dit_bytes / 2**20:,.0f} MiB fp32", file=sys.stderr)
        for mib in args.part_mib:
            out = os.path.join(d, f"m{mib}")
            rss, secs, text = peak_rss([sys.executable, "-m", "weights_convert", "release", os.path.join(d, "rel"),
                                        "--out", out, "--part-mib", str(mib), "--quiet"], env)
            manifest = json.load(open(os.path.join(out, "gvc_model.json")))
            rows.append({"part_mib": mib, "dit_parts": (manifest.get("parts") or {}).get("dit", 1),
                         "peak_rss_mib": round(rss), "seconds": round(secs, 1), "fingerprint": manifest["fingerprint"],
                         "report": [ln for ln in text.splitlines() if ln.startswith("peak")]})
            print(rows[-1], file=sys.stderr)
    result = {"dit_mib_fp32": round(dit_bytes / 2**20), "layers": args.layers, "runs": rows,
              "machine": f"{platform.machine()} {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
