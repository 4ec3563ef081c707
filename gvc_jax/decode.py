"""``python -m gvc_jax.decode IN.gvc -o OUT.mp4``: rebuild a video from a .gvc stream.

The decoder replays the encoder's trajectory with the atoms named in the stream; it checks
the model fingerprint and each GOP's final-latent hash (a mismatch is reported as drift).
Decoded frames are written as each GOP finishes; the output appears (atomically) at the end.
With ``--distributed`` (the same command on every host) the GOPs of each wave are decoded on the
devices of every process and process 0 writes the video.

As a Python function: ``from gvc_jax import decode; frames = decode("clip.gvc")``
(see ``gvc_jax.api.decode``).
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import gvc_jax  # noqa: F401  (environment before jax)
from gvc_jax import api, cli
from gvc_jax.codec.format import bitstream
from gvc_jax.codec.session import decode_stream
from gvc_jax.evaluation import parse_metrics
from gvc_jax.io.video_reader import VideoReader
from gvc_jax.io.video_writer import VideoWriter
from gvc_jax.parallel import GopMesh


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gvc_jax.decode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="a .gvc stream")
    p.add_argument("-o", "--output", required=True,
                   help="output video (.mp4, .mkv, .y4m, .npy, or a new or empty directory for PNG frames)")
    cli.add_model_args(p)
    p.add_argument("--reference", default=None, metavar="VIDEO",
                   help="report the quality against this video (--metrics; default PSNR, MS-SSIM, LPIPS, DISTS)")
    cli.add_metrics_arg(p, "with --reference")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 2) if a GOP's decoded latent differs from the encoder's")
    p.add_argument("--ignore-fingerprint", action="store_true",
                   help="decode even if the model differs from the encoder's")
    p.add_argument("--conceal", action="store_true",
                   help="conceal GOPs whose records are damaged or missing (a cut file) instead of failing: "
                        "they repeat the last frame decoded before them; the report lists them and the exit "
                        "status is 3 when any GOP was concealed")
    p.add_argument("--allow-drift", action="store_true",
                   help="accept GOPs whose decoded latent differs from the encoder's while other GOPs reproduce "
                        "theirs exactly (by default an error: platform noise changes every GOP, a wrong record one)")
    cli.add_distributed_args(p, "each decodes its share of every wave (every process reads the stream), "
                                "process 0 writes the video and the report")
    return p


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    writes = cli.start_distributed(args)  # process 0 (or the only one) writes the outputs

    if args.conceal and args.distributed:
        raise ValueError("--conceal is not available with --distributed")
    if args.metrics is not None:
        if not args.reference:
            raise ValueError("--metrics needs --reference")
        parse_metrics(args.metrics)
    model_dir = args.model if args.model and os.path.isdir(args.model) else None
    cli.check_outputs(files=(args.json,), videos=(args.output,), inputs=(args.input, args.reference, model_dir))
    mesh = GopMesh(args.devices, args.weight_shards)
    with bitstream.naming(args.input):
        stream = bitstream.read_file(args.input)
        header, _ = bitstream.read_header(stream)
    model = cli.model_from_args(args, mesh)
    result, seconds, evaluator = _decode_file(args, stream, header, model, mesh, writes)
    if not writes:
        return 0
    cli.emit_report(_report(args, result, model, mesh, seconds, evaluator, len(stream)), args.json,
                    {"per_frame": evaluator.per_frame()} if evaluator else None)
    return EXIT_CONCEALED if result.concealed else 0


def _decode_file(args, stream: bytes, header, model, mesh, writes: bool) -> tuple:
    """Decode ``stream`` into ``args.output`` (process 0 writes it, atomically), measured against
    ``--reference`` if given: -> (CodecResult, seconds, RunningEval or None)."""
    writer = VideoWriter(args.output, header.fps_num / header.fps_den) if writes else None
    sinks = [writer.write] if writer else []
    reference = evaluator = None
    try:
        if args.reference and writes:
            reference = VideoReader(args.reference, max_frames=header.num_frames,
                                    resize=(header.orig_width, header.orig_height))
            if reference.num_frames != header.num_frames:
                raise ValueError(f"reference {args.reference} has {reference.num_frames} frames, "
                                 f"the stream {header.num_frames}")
            evaluator = cli.evaluator_for(args.metrics, header.orig_height, header.orig_width)
            sinks.append(functools.partial(_evaluate, evaluator, reference))

        def sink(chunk) -> None:
            for s in sinks:
                s(chunk)

        t0 = time.perf_counter()
        with bitstream.naming(args.input):
            result = decode_stream(stream, model, check_fingerprint=not args.ignore_fingerprint, strict=args.strict,
                                   sink=sink, progress=cli.progress_printer(args.quiet), devices=mesh,
                                   conceal=args.conceal, allow_drift=args.allow_drift)
        seconds = time.perf_counter() - t0
        if writer:
            writer.commit()
    except BaseException:
        if writer:
            writer.abort()
        raise
    finally:
        if reference is not None:
            reference.close()
    return result, seconds, evaluator


def _evaluate(evaluator, reference, chunk) -> None:
    evaluator.reference(reference.read(len(chunk)))
    evaluator.decoded(chunk)


def _report(args, result, model, mesh, seconds: float, evaluator, size: int) -> dict:
    """The decoder's report (warnings for concealed and drifted GOPs on stderr)."""
    if result.concealed:
        after = f"; GOPs {result.affected} are conditioned on concealed frames" if result.affected else ""
        print(f"warning: GOPs {result.concealed} were damaged or missing and are concealed (frame freeze){after}",
              file=sys.stderr)
    drifted = [g.index for g in result.gops if g.drift and g.index not in result.affected]
    if drifted:
        print(f"warning: GOPs {drifted} decoded to a latent that differs from the encoder's "
              f"(different platform or model?); the video may differ from the encoder's reconstruction",
              file=sys.stderr)
    report = {"input": args.input, "output": args.output, "model": model.name, **result.report(size),
              "seconds": seconds, "drifted_gops": drifted, "devices": len(mesh.devices),
              "weight_shards": mesh.weight_shards}
    if args.conceal:
        report.update({"concealed_gops": result.concealed, "affected_gops": result.affected})
    if evaluator:
        report.update(evaluator.result())
    return report


EXIT_CONCEALED = 3  # decode --conceal wrote the whole video, but some GOPs are concealed


cli.callable_module(__name__, api.decode)

if __name__ == "__main__":
    cli.entry_point(main)
