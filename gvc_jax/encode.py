"""``python -m gvc_jax.encode INPUT -o OUT.gvc``: compress a video into a .gvc stream.

Frames are read GOP by GOP; the stream is written atomically when the last GOP is done, and
the reconstruction (``--decoded``) is written as GOPs finish. With ``--eval`` the reconstruction
the decoder will produce (the encoder knows it exactly) is compared with the input: PSNR,
MS-SSIM, LPIPS. Every option and output path is checked before any frame is read.

As a Python function: ``from gvc_jax import encode; stream = encode("clip.mp4", atoms=16)``
(see ``gvc_jax.api.encode``).
"""
from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Union

import gvc_jax  # noqa: F401  (environment before jax)
from gvc_jax import api, cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gvc_jax.encode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="input video (mp4, mkv, y4m, gif, ...), a directory of frames, or an image")
    p.add_argument("-o", "--output", required=True, help="output .gvc file (with --batch: output directory)")
    p.add_argument("--batch", action="store_true",
                   help="INPUT is a directory of videos or a list file (one path a line): code them in one run, "
                        "the GOPs of all videos side by side on the devices (I2V chains in parallel), one "
                        "OUTPUT/NAME.gvc each; the videos must have one coded size (see --resize)")
    p.add_argument("--resume", action="store_true",
                   help="keep a journal OUTPUT.resume of finished GOPs while encoding; rerunning the same command "
                        "with --resume after an interruption codes only the unfinished GOPs (same bytes). The "
                        "journal is removed when the stream is written; pass --resume on the first run too")
    cli.add_model_args(p)
    cli.add_distributed_args(p, "each codes its share of every wave, process 0 writes the stream, the report "
                                "and --decoded / --compare")
    groups = {name: p.add_argument_group(name) for name in (api.SAMPLER_GROUP, api.VARIANTS_GROUP, api.INPUT_GROUP)}
    groups[api.SAMPLER_GROUP].add_argument("--preset", default="default", choices=tuple(api.PRESETS),
                                           help="option preset the codec flags override (default %(default)s)")
    groups[api.SAMPLER_GROUP].add_argument(
        "--prompt", default="", metavar="TEXT",
        help="text prompt both sides condition on (stored in the stream, UTF-8, at most 2048 bytes; needs a model "
             "converted with its umT5 text encoder; default: the empty prompt)")
    cli.add_codec_args(p, groups)  # every CodecOptions field, from its declaration
    groups[api.VARIANTS_GROUP].add_argument(
        "--free-first-frame", action="store_true",
        help="report bpp without the first anchor frame's bytes (the published I2V accounting); the report labels it")
    v = groups[api.INPUT_GROUP]
    v.add_argument("--max-frames", type=int, default=None, help="encode at most this many frames")
    v.add_argument("--start", type=int, default=0, help="first frame to encode (default 0)")
    v.add_argument("--resize", type=cli.parse_size, default=None, metavar="WxH", help="resize frames before coding")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval", action="store_true",
                   help="report the quality of the reconstruction (--metrics; default PSNR, MS-SSIM, LPIPS)")
    cli.add_metrics_arg(e, "with --eval")
    e.add_argument("--decoded", default=None, metavar="VIDEO", help="also write the reconstruction (e.g. out.mp4)")
    e.add_argument("--compare", default=None, metavar="PNG",
                   help="also write a side-by-side image of the first GOP's original and decoded frames")
    return p


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    writes = cli.start_distributed(args)  # process 0 (or the only one) writes the outputs
    from gvc_jax.parallel import GopMesh

    options = _checked_options(args)  # every option and output path, before any work
    mesh = GopMesh(args.devices, args.weight_shards)
    if args.batch:
        return _main_batch(args, options, mesh, writes)
    model = _model(args, mesh)
    run = _encode_file(args, options, model, mesh, writes, _resume_settings(args))
    if writes:
        cli.emit_report(_report(args, options, model, mesh, run), args.json,
                        {"per_frame": run.evaluator.per_frame()} if run.evaluator else None)
    return 0


def _checked_options(args) -> "api.CodecOptions":
    """The run's CodecOptions; every other option and every output path checked (nothing read yet)."""
    from gvc_jax.codec.format.bitstream import check_prompt
    from gvc_jax.codec.gop.journal import journal_path
    from gvc_jax.evaluation import parse_metrics

    options = api.CodecOptions.from_args(args, args.preset)  # validates every codec option
    if args.max_frames is not None and args.max_frames < 1:
        raise ValueError("--max-frames must be >= 1")
    if args.start < 0:
        raise ValueError("--start must be >= 0")
    check_prompt(args.prompt)
    if args.metrics is not None:
        if not args.eval:
            raise ValueError("--metrics needs --eval")
        parse_metrics(args.metrics)
    if args.compare and not args.compare.lower().endswith(".png"):
        raise ValueError(f"--compare must name a .png file, got {args.compare}")
    inputs = (args.input, args.model if args.model and os.path.isdir(args.model) else None)
    if args.batch:
        _check_batch_outputs(args, inputs)
    else:
        journal = journal_path(args.output, 0) if args.resume else None
        cli.check_outputs(files=(args.output, args.compare, args.json, journal), videos=(args.decoded,),
                          inputs=inputs)
    return options


def _resume_settings(args) -> dict:
    """``encode_stream``'s resume arguments for ``--resume`` (the journal bound to the input)."""
    if not args.resume:
        return {}
    from jax import process_index

    from gvc_jax.codec.gop.journal import check_journal_path, input_identity

    if not os.path.exists(args.input):
        raise ValueError(f"--resume needs an input file: {args.input} does not exist")
    check_journal_path(args.output, process_index())
    return {"resume": args.output,
            "resume_identity": (input_identity(args.input), args.start, args.max_frames, args.resize)}


@dataclass
class _Run:
    """What one file's encode gives the report."""

    result: Any
    frames: int
    height: int
    width: int
    fps: float
    seconds: float
    evaluator: Any = None
    compare: Dict[str, Any] = field(default_factory=dict)


def _encode_file(args, options, model, mesh, writes: bool, resume: dict) -> _Run:
    """Encode ``args.input`` to ``args.output`` (and --decoded; --eval / --compare collected), the
    outputs written atomically by process 0, the resume journal removed once the stream is safe."""
    from gvc_jax.codec.session import encode_stream
    from gvc_jax.evaluation import TeeReader
    from gvc_jax.io.atomic import atomic_write_bytes
    from gvc_jax.io.video_reader import VideoReader
    from gvc_jax.io.video_writer import VideoWriter

    with VideoReader(args.input, start=args.start, max_frames=args.max_frames, resize=args.resize) as reader:
        gop = options.gop_frames_for(reader.num_frames, model.config.vae.temporal_stride)
        sampler = options.sampler(reader.height, reader.width, gop, model.config.vae.temporal_stride)
        run = _Run(None, reader.num_frames, reader.height, reader.width, reader.fps, 0.0,
                   cli.evaluator_for(args.metrics, reader.height, reader.width) if args.eval and writes else None,
                   {"orig": None, "dec": None})
        # with several processes every one takes part in gathering the frames; process 0 uses them
        wants_frames = bool(args.decoded or args.eval or args.compare)
        sinks: List[Callable[[Any], object]] = []
        source: Union[VideoReader, TeeReader] = reader
        comparing = bool(args.compare) and writes
        if run.evaluator or comparing:
            source = TeeReader(reader, lambda chunk: _on_source(run, comparing, chunk))
            sinks.append(lambda chunk: _on_decoded(run, comparing, chunk))
        writer = VideoWriter(args.decoded, run.fps) if args.decoded and writes else None
        if writer:
            sinks.append(writer.write)
        variant = options.variant_object()
        target = {}
        if options.target_bpp is not None:
            with VideoReader(args.input, start=args.start, max_frames=args.max_frames, resize=args.resize) as again:
                target = api.rate_target(options, variant, model, again, gop, len(sampler.atoms_per_frame))

        def sink(chunk) -> None:
            for s in sinks:
                s(chunk)

        try:
            t0 = time.perf_counter()
            run.result = encode_stream(source, model, sampler, variant=variant, gop_frames=gop, **target,
                                       sink=sink if wants_frames else None,
                                       progress=cli.progress_printer(args.quiet), devices=mesh, prompt=args.prompt,
                                       **resume)
            run.seconds = time.perf_counter() - t0
            if writes:  # with several processes every one holds the stream; one writes it
                atomic_write_bytes(args.output, run.result.stream)
            mesh.barrier("gvc-jax: stream written")  # the journals go once the stream is safely written
            if run.result.journal is not None:
                run.result.journal.remove()
            if writer:
                writer.commit()
        except BaseException:
            if writer:
                writer.abort()
            raise
    return run


def _on_source(run: _Run, comparing: bool, chunk) -> None:
    if run.evaluator:
        run.evaluator.reference(chunk)
    if comparing and run.compare["orig"] is None:
        run.compare["orig"] = chunk.copy()


def _on_decoded(run: _Run, comparing: bool, chunk) -> None:
    if run.evaluator:
        run.evaluator.decoded(chunk)
    if comparing and run.compare["dec"] is None:
        run.compare["dec"] = chunk.copy()


def _report(args, options, model, mesh, run: _Run) -> dict:
    """The encoder's report (printed as a table, written with --json); writes --compare."""
    from gvc_jax.codec.session import rate_breakdown
    from gvc_jax.io.preview import save_side_by_side
    from gvc_jax.metrics import bpp

    result, frames, width, height, fps = run.result, run.frames, run.width, run.height, run.fps
    size = os.path.getsize(args.output)
    report = {
        "input": args.input, "output": args.output, "model": model.name, "frames": frames,
        "width": width, "height": height, "fps": fps, "gops": len(result.gops), "bytes": size,
        "bpp": bpp(size, frames, width, height), "kbps": 8 * size / 1000 / (frames / fps),
        "seconds": run.seconds, "seconds_per_gop": [round(g.seconds, 3) for g in result.gops],
        "latent_mse": [g.latent_mse for g in result.gops], "variant": options.variant, "prompt": args.prompt,
        "devices": len(mesh.devices), "weight_shards": mesh.weight_shards,
        "resumed_gops": [g.index for g in result.gops if g.resumed],
        **rate_breakdown(result), "atoms_per_frame": list(result.header.atoms_per_frame),
    }
    if options.target_bpp is not None:
        report.update({"target_bpp": options.target_bpp,
                       "target_error_pct": 100 * (report["bpp"] / options.target_bpp - 1)})
    if args.free_first_frame:
        charged = size - report["first_anchor_bytes"]
        report.update({"accounting": "free first frame (published I2V): bpp excludes the first anchor",
                       "bytes_charged": charged, "bpp": bpp(charged, frames, width, height),
                       "bpp_all_bytes": bpp(size, frames, width, height)})
    if run.evaluator:
        report.update(run.evaluator.result())
    if args.compare:
        orig, dec = run.compare["orig"], run.compare["dec"]
        n = min(len(orig), len(dec))
        save_side_by_side(args.compare, orig[:n], dec[:n])
    return report


def _model(args, mesh):
    """The model of ``--model`` (its DiT read onto ``mesh``'s weight shards); refuses a ``--prompt`` it cannot take."""
    model = api.get_model(args.model, dtype=args.dtype, attention=args.attention, mesh=mesh)
    if args.prompt and not model.text_encoder:
        raise ValueError(f"--prompt needs a model with a text encoder; {model.name} has none "
                         "(convert its release with python -m weights_convert release ...)")
    return model


VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".y4m", ".gif", ".npy")


def batch_inputs(path: str) -> list:
    """The videos of a batch: the video files of a directory (sorted), or the paths of a list file
    (one a line, relative to the list's directory; blank lines and ``#`` comments skipped)."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if os.path.splitext(n)[1].lower() in VIDEO_SUFFIXES)
        videos = [os.path.join(path, n) for n in names]
    elif os.path.isfile(path):
        base = os.path.dirname(os.path.abspath(path))
        with open(path, encoding="utf-8") as f:
            lines = [ln.strip() for ln in f]
        videos = [ln if os.path.isabs(ln) else os.path.join(base, ln) for ln in lines if ln and not ln.startswith("#")]
        missing = [v for v in videos if not os.path.isfile(v)]
        if missing:
            raise ValueError(f"{path} lists {len(missing)} missing file(s), e.g. {missing[0]}")
    else:
        raise ValueError(f"--batch input {path} is neither a directory nor a list file")
    if not videos:
        raise ValueError(f"--batch input {path} holds no videos ({' '.join(VIDEO_SUFFIXES)})")
    stems = [os.path.splitext(os.path.basename(v))[0] for v in videos]
    dup = sorted({s for s in stems if stems.count(s) > 1})
    if dup:
        raise ValueError(f"two videos of the batch would both be written as {dup[0]}.gvc")
    return videos


def _batch_files(args) -> tuple:
    """-> (the batch's videos, their output streams ``OUTPUT/NAME.gvc``)."""
    videos = batch_inputs(args.input)
    return videos, [os.path.join(args.output, os.path.splitext(os.path.basename(v))[0] + ".gvc") for v in videos]


def _check_batch_outputs(args, inputs) -> None:
    """Before any work: the output directory, its streams (new, none of them an input) and --json."""
    videos, outputs = _batch_files(args)
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise ValueError(f"--batch needs an output directory, {args.output} is a file")
    existing = [o for o in outputs if os.path.lexists(o)]
    if existing:
        raise ValueError(f"{existing[0]} exists (a batch never replaces streams; {len(existing)} would be)")
    inputs = tuple(inputs) + tuple(videos)
    for out in outputs:
        cli.check_not_input(out, inputs)
    parent = os.path.abspath(args.output)
    while not os.path.isdir(parent):  # the directories that do not exist yet are created
        parent = os.path.dirname(parent)
    from gvc_jax.io.atomic import probe_writable

    probe_writable(parent)
    cli.check_outputs(files=(args.json,), inputs=inputs + tuple(outputs))


def _main_batch(args, options, mesh, writes: bool) -> int:
    """``--batch``: every video of a directory / list file, one stream each, coded in one run."""
    import contextlib

    from gvc_jax.codec.session import encode_batch, rate_breakdown
    from gvc_jax.io.atomic import atomic_write_bytes
    from gvc_jax.io.video_reader import VideoReader
    from gvc_jax.metrics import bpp

    unsupported = [flag for flag, on in (("--decoded", args.decoded), ("--eval", args.eval),
                                         ("--compare", args.compare), ("--resume", args.resume),
                                         ("--target-bpp", options.target_bpp is not None),
                                         ("--free-first-frame", args.free_first_frame)) if on]
    if unsupported:
        raise ValueError(f"--batch writes only the streams: drop {', '.join(unsupported)}")
    videos, outputs = _batch_files(args)
    model = _model(args, mesh)
    with contextlib.ExitStack() as stack:
        readers = [stack.enter_context(VideoReader(v, start=args.start, max_frames=args.max_frames, resize=args.resize))
                   for v in videos]
        gop = options.gop_frames_for(max(r.num_frames for r in readers), model.config.vae.temporal_stride)
        sampler = options.sampler(readers[0].height, readers[0].width, gop, model.config.vae.temporal_stride)
        t0 = time.perf_counter()
        results = encode_batch(readers, model, sampler, variant=options.variant_object(), gop_frames=gop,
                               progress=cli.progress_printer(args.quiet), devices=mesh, prompt=args.prompt)
        seconds = time.perf_counter() - t0
    if not writes:
        return 0
    os.makedirs(args.output, exist_ok=True)
    rows = []
    for video, out, reader, result in zip(videos, outputs, readers, results, strict=False):
        atomic_write_bytes(out, result.stream)
        size = len(result.stream)
        rows.append({"input": video, "output": out, "frames": reader.num_frames, "gops": len(result.gops),
                     "bytes": size, "bpp": bpp(size, reader.num_frames, reader.width, reader.height),
                     **rate_breakdown(result)})
    report = {"batch": args.input, "model": model.name, "variant": options.variant, "videos": len(videos),
              "devices": len(mesh.devices), "seconds": seconds, "bytes": sum(r["bytes"] for r in rows)}
    for r in rows:
        print(f"{r['output']}: {r['frames']} frames, {r['gops']} GOPs, {r['bytes']:,} B, {r['bpp']:.5f} bpp")
    cli.print_table(report)
    if args.json:
        cli.write_json(args.json, {**report, "streams": rows})
    return 0


cli.callable_module(__name__, api.encode)

if __name__ == "__main__":
    cli.entry_point(main)
