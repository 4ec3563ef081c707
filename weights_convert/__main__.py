"""Command line: ``python -m weights_convert {release,diffusers,original} ...`` (also ``gvc-convert``).

Errors a user can cause (missing files, wrong keys or shapes, existing output) print one line
``error: ...`` on stderr and exit with status 2; no output directory is left behind.
"""
from __future__ import annotations

import argparse
import os
import sys

import gvc_jax  # noqa: F401  (XLA flags before jax is imported)
from gvc_jax.models.checkpoint import CheckpointError
from gvc_jax.models.configs import PRESETS
from weights_convert.convert import convert_diffusers, convert_original
from weights_convert.hub import fetch_release  # (huggingface_hub itself is imported only for an hf: source)
from weights_convert.release import convert_release

EPILOG = """examples:
  python -m weights_convert release hf:Wan-AI/Wan2.1-T2V-1.3B-Diffusers --out models/t2v-1.3b
  python -m weights_convert release ./Wan2.1-I2V-14B-480P-Diffusers --out models/i2v-14b --dtype bfloat16
  python -m weights_convert release ./Wan2.1-FLF2V-14B-720P --out models/flf2v-14b --dtype bfloat16
  python -m weights_convert diffusers ./Wan2.1-T2V-1.3B-Diffusers --out models/t2v-1.3b --preset wan2.1-t2v-1.3b
  python -m weights_convert original --dit ./Wan2.1-T2V-1.3B/diffusion_pytorch_model.safetensors \\
      --vae ./Wan2.1-T2V-1.3B/Wan2.1_VAE.pth --preset wan2.1-t2v-1.3b --out models/t2v-1.3b
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m weights_convert",
        description="Convert Wan2.1 checkpoints (diffusers or original layout) to a gvc-jax model directory.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="layout", required=True, metavar="{release,diffusers,original}")

    def common(sp):
        sp.add_argument("--out", required=True, help="output model directory (written atomically)")
        sp.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="DiT parameter dtype (default float32; fp32 tables stay fp32 where the model says so)")
        sp.add_argument("--vae-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="VAE parameter dtype (default float32, as the reference runs it)")
        sp.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out directory")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")

    r = sub.add_parser("release", help="a whole Wan2.1 release (either layout): DiT, VAE, umT5, tokenizer, CLIP",
                       description="Convert a Wan2.1 release directory, diffusers layout (transformer/, vae/, "
                                   "text_encoder/, tokenizer/, image_encoder/) or original layout (config.json, "
                                   "diffusion_pytorch_model*.safetensors, Wan2.1_VAE.pth, "
                                   "models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/, and for I2V / FLF2V "
                                   "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth), into one model "
                                   "directory; the empty prompt's umT5 context is computed and stored.")
    r.add_argument("src", help="release directory, or hf:ORG/NAME[@REVISION]: fetched from the Hugging Face Hub "
                               "(only the files the conversion reads; resumable; HF_HUB_OFFLINE=1: the local "
                               "cache only; the cache is HF_HUB_CACHE, else HF_HOME/hub)")
    r.add_argument("--encoder-dtype", choices=("float32", "bfloat16"), default=None,
                   help="umT5 and CLIP parameter dtype (default: --dtype)")
    r.add_argument("--clip-preprocess", choices=("wan", "center_crop"), default="wan",
                   help="CLIP input: plain bicubic resize to 224x224 as Wan's reference (default), or the "
                        "diffusers pipelines' shortest-edge resize + centre crop; recorded in the model")
    r.add_argument("--name", default=None, help="model name (default: the release directory's name)")
    r.add_argument("--part-mib", type=int, default=1024, metavar="MIB",
                   help="the DiT is converted and written in parts of about this many MiB (default 1024): "
                        "the peak host memory holds one part, not the whole DiT")
    common(r)

    d = sub.add_parser("diffusers", help="diffusers pipeline layout (transformer/ and vae/ subfolders)",
                       description="Convert a diffusers Wan2.1 pipeline directory (transformer/ and vae/, each "
                                   "config.json + safetensors, single or sharded with an index json).")
    d.add_argument("src", nargs="?", help="pipeline directory holding transformer/ and vae/")
    d.add_argument("--transformer", help="transformer directory (default SRC/transformer)")
    d.add_argument("--vae", help="VAE directory (default SRC/vae)")
    d.add_argument("--preset", help=f"name the model after a preset and check the configs match it "
                                    f"({', '.join(sorted(PRESETS))}); default 'custom'")
    common(d)

    o = sub.add_parser("original", help="original Wan layout (DiT safetensors + Wan2.1_VAE.pth)",
                       description="Convert original Wan2.1 checkpoints; the architecture comes from --preset.")
    o.add_argument("--dit", required=True, help="DiT .safetensors file, index json, or directory of shards")
    o.add_argument("--vae", required=True, help="Wan2.1_VAE.pth (read with torch.load(weights_only=True))")
    o.add_argument("--preset", required=True, choices=sorted(PRESETS), metavar="PRESET",
                   help=f"model preset: {', '.join(sorted(PRESETS))}")
    common(o)
    return p


def _progress(quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    return lambda it: tqdm(it, desc="tensors", unit="tensor", disable=None, leave=False)


def run(args) -> dict:
    if getattr(args, "part_mib", 1) < 1:
        raise ValueError("--part-mib must be >= 1")
    progress = _progress(args.quiet)
    if args.layout == "release":
        log = None if args.quiet else (lambda msg: print(f"converting {msg} ...", file=sys.stderr))
        src, name = args.src, args.name
        if src.startswith("hf:"):  # a release on the Hub: fetched (or found in the cache) first
            fetch_log = None if args.quiet else (lambda msg: print(f"fetching {msg} ...", file=sys.stderr))
            src, repo_name = fetch_release(src, quiet=args.quiet, log=fetch_log)
            name = name or repo_name
        return convert_release(src, args.out, dtype=args.dtype, vae_dtype=args.vae_dtype,
                               encoder_dtype=args.encoder_dtype, clip_preprocess=args.clip_preprocess,
                               name=name, overwrite=args.overwrite, progress=progress, log=log,
                               part_bytes=args.part_mib << 20)
    if args.layout == "diffusers":
        if not args.src and not (args.transformer and args.vae):
            raise ValueError("give SRC or both --transformer and --vae")
        transformer = args.transformer or os.path.join(args.src, "transformer")
        vae = args.vae or os.path.join(args.src, "vae")
        for what, path in (("transformer", transformer), ("vae", vae)):
            if not os.path.isdir(path):
                raise ValueError(f"{what} directory {path} does not exist")
        return convert_diffusers(transformer, vae, args.out, dtype=args.dtype, vae_dtype=args.vae_dtype,
                                 preset=args.preset, overwrite=args.overwrite, progress=progress)
    return convert_original(args.dit, args.vae, args.preset, args.out, dtype=args.dtype,
                            vae_dtype=args.vae_dtype, overwrite=args.overwrite, progress=progress)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except (CheckpointError, ValueError, OSError) as e:
        msg = str(e) or type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    p = summary["params"]
    extra = "".join(f", {what} {p[key]:,} params" for key, what in (("image_encoder", "CLIP"), ("text_encoder", "umT5"))
                    if key in p)
    print(f"converted {summary['name']}: DiT {p['dit']:,} params, VAE {p['vae']:,} params{extra}")
    if "peak_rss_mib" in summary:
        print("peak host memory (MiB) after each part: "
              + ", ".join(f"{k} {v:,.0f}" for k, v in summary["peak_rss_mib"].items()))
    print(f"fingerprint {summary['fingerprint']}")
    print(f"wrote {summary['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
