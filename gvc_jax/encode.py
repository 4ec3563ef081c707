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
import contextlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from jax import process_index

import gvc_jax  # noqa: F401  (environment before jax)
from gvc_jax import api, cli
from gvc_jax.codec.format.bitstream import check_prompt
from gvc_jax.codec.gop.journal import check_journal_path, input_identity, journal_path
from gvc_jax.codec.session import EncodeJob
from gvc_jax.evaluation import TeeReader, parse_metrics
from gvc_jax.io.atomic import atomic_write_bytes, probe_writable
from gvc_jax.io.preview import save_side_by_side
from gvc_jax.io.video_reader import VideoReader
from gvc_jax.io.video_writer import VideoWriter
from gvc_jax.metrics import bpp
from gvc_jax.parallel import GopMesh


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m gvc_jax.encode", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="input video (mp4, mkv, y4m, gif, ...), a directory of frames, or an image")
    p.add_argument("-o", "--output", required=True, help="output .gvc file (with --batch: output directory)")
    p.add_argument("--batch", action="store_true",
                   help="INPUT is a directory of videos or a list file (one path a line): code them in one run, "
                        "the GOPs of all videos side by side on the devices (I2V chains in parallel), one "
                        "OUTPUT/NAME.gvc each; the videos must have one coded size (see --resize). --decoded and "
                        "--compare then name directories (NAME.mp4, NAME.png); --eval, --resume and --target-bpp "
                        "apply to every video")
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
                   help="report the quality of the reconstruction (--metrics; default PSNR, MS-SSIM, LPIPS, DISTS)")
    cli.add_metrics_arg(e, "with --eval")
    e.add_argument("--decoded", default=None, metavar="VIDEO", help="also write the reconstruction (e.g. out.mp4)")
    e.add_argument("--compare", default=None, metavar="PNG",
                   help="also write a side-by-side image of the first GOP's original and decoded frames")
    return p


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    writes = cli.start_distributed(args)  # process 0 (or the only one) writes the outputs
    options = _checked_options(args)  # every option and output path, before any work
    mesh = GopMesh(args.devices, args.weight_shards)
    model = _model(args, mesh)
    runs, seconds = _encode_files(args, options, model, mesh, writes)
    if writes:
        reports = [_report(args, options, model, mesh, run) for run in runs]
        if args.batch:
            _emit_batch_report(args, options, model, mesh, reports, seconds)
        else:
            cli.emit_report(reports[0], args.json,
                            {"per_frame": runs[0].evaluator.per_frame()} if runs[0].evaluator else None)
    return 0


@dataclass(frozen=True)
class _Item:
    """One video of the run and its outputs (``--batch``: ``OUTPUT/NAME.gvc``, ``DECODED/NAME.mp4``,
    ``COMPARE/NAME.png``)."""

    input: str
    output: str
    decoded: Optional[str] = None
    compare: Optional[str] = None


def _items(args) -> List[_Item]:
    if not args.batch:
        return [_Item(args.input, args.output, args.decoded, args.compare)]
    items = []
    for video in batch_inputs(args.input):
        stem = os.path.splitext(os.path.basename(video))[0]
        items.append(_Item(video, os.path.join(args.output, stem + ".gvc"),
                           args.decoded and os.path.join(args.decoded, stem + ".mp4"),
                           args.compare and os.path.join(args.compare, stem + ".png")))
    return items


def _checked_options(args) -> "api.CodecOptions":
    """The run's CodecOptions; every other option and every output path checked (nothing read yet)."""
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
    if args.compare and not args.batch and not args.compare.lower().endswith(".png"):
        raise ValueError(f"--compare must name a .png file, got {args.compare}")
    inputs = (args.input, args.model if args.model and os.path.isdir(args.model) else None)
    if args.batch:
        _check_batch_outputs(args, inputs)
    else:
        journal = journal_path(args.output, 0) if args.resume else None
        cli.check_outputs(files=(args.output, args.compare, args.json, journal), videos=(args.decoded,),
                          inputs=inputs)
    return options


def _resume_settings(args, item: _Item) -> dict:
    """``EncodeJob``'s resume fields for ``--resume`` (the journal bound to the input)."""
    if not args.resume:
        return {}
    if not os.path.exists(item.input):
        raise ValueError(f"--resume needs an input file: {item.input} does not exist")
    check_journal_path(item.output, process_index())
    return {"resume": item.output,
            "resume_identity": (input_identity(item.input), args.start, args.max_frames, args.resize)}


@dataclass
class _Run:
    """What one video's encode gives the report."""

    item: _Item
    reader: Any
    result: Any = None
    seconds: float = 0.0     # the run's encode time (a batch: all videos together)
    evaluator: Any = None
    writer: Any = None
    compare: Dict[str, Any] = field(default_factory=dict)

    def on_source(self, chunk) -> None:
        if self.evaluator:
            self.evaluator.reference(chunk)
        if "orig" in self.compare and self.compare["orig"] is None:
            self.compare["orig"] = chunk.copy()

    def on_decoded(self, chunk) -> None:
        if self.evaluator:
            self.evaluator.decoded(chunk)
        if "dec" in self.compare and self.compare["dec"] is None:
            self.compare["dec"] = chunk.copy()
        if self.writer:
            self.writer.write(chunk)


def _job(args, run: _Run, wants_frames: bool, target) -> EncodeJob:
    """``run``'s ``EncodeJob``: its reader (teed to --eval / --compare), its sink, target and journal."""
    source = run.reader
    if run.evaluator or run.compare:
        source = TeeReader(run.reader, run.on_source)
    return EncodeJob(source, run.on_decoded if wants_frames else None, target=target,
                     **_resume_settings(args, run.item))


def _encode_files(args, options, model, mesh, writes: bool) -> tuple:
    """Encode every video of the run (one, or a batch) in one run of the GOP loop -> (runs, seconds).
    Each stream (and --decoded) is written atomically by process 0; the resume journals are removed
    once every stream is safely written."""
    items = _items(args)
    select = dict(start=args.start, max_frames=args.max_frames, resize=args.resize)
    if args.batch:  # checked: new or existing directories (the journals and writers go into them)
        for directory in (args.output, args.decoded if writes else None, args.compare if writes else None):
            if directory:
                os.makedirs(directory, exist_ok=True)
    with contextlib.ExitStack() as stack:
        readers = [stack.enter_context(VideoReader(it.input, **select)) for it in items]
        setup = options.resolve(model, readers, lambda i: VideoReader(items[i].input, **select))
        # with several processes every one takes part in gathering the frames; process 0 uses them
        wants_frames = bool(args.decoded or args.eval or args.compare)
        runs = [_Run(it, r) for it, r in zip(items, readers, strict=True)]
        for run in runs:
            if args.eval and writes:
                run.evaluator = cli.evaluator_for(args.metrics, run.reader.height, run.reader.width)
            if run.item.compare and writes:
                run.compare = {"orig": None, "dec": None}
        jobs = [_job(args, run, wants_frames, t) for run, t in zip(runs, setup.targets, strict=True)]
        try:
            if writes:
                for run in runs:
                    if run.item.decoded:
                        run.writer = VideoWriter(run.item.decoded, run.reader.fps)
            t0 = time.perf_counter()
            results = setup.encode(jobs, model, progress=cli.progress_printer(args.quiet), devices=mesh,
                                   prompt=args.prompt)
            seconds = time.perf_counter() - t0
            for run in runs:
                run.seconds = seconds
            _write_outputs(args, runs, results, writes, mesh)
        except BaseException:
            for run in runs:
                if run.writer:
                    run.writer.abort()
            raise
    return runs, seconds


def _write_outputs(args, runs: List[_Run], results, writes: bool, mesh) -> None:
    """The streams (process 0, atomically), then the journals (once every stream is safe), then --decoded."""
    for run, result in zip(runs, results, strict=True):
        run.result = result
        if writes:  # with several processes every one holds the stream; one writes it
            atomic_write_bytes(run.item.output, result.stream)
    mesh.barrier("gvc-jax: stream written")  # the journals go once the stream is safely written
    for run in runs:
        if run.result.journal is not None:
            run.result.journal.remove()
        if run.writer:
            run.writer.commit()


def _report(args, options, model, mesh, run: _Run) -> dict:
    """One video's report (printed as a table, written with --json); writes its --compare image."""
    result, reader = run.result, run.reader
    frames, width, height = reader.num_frames, reader.width, reader.height
    size = os.path.getsize(run.item.output)
    report = {"input": run.item.input, "output": run.item.output, "model": model.name, **result.report(size),
              "latent_mse": [g.latent_mse for g in result.gops], "variant": options.variant, "prompt": args.prompt,
              "devices": len(mesh.devices), "weight_shards": mesh.weight_shards,
              "resumed_gops": [g.index for g in result.gops if g.resumed]}
    if not args.batch:
        report["seconds"] = run.seconds
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
    if run.item.compare:
        orig, dec = run.compare["orig"], run.compare["dec"]
        n = min(len(orig), len(dec))
        save_side_by_side(run.item.compare, orig[:n], dec[:n])
    return report


def _emit_batch_report(args, options, model, mesh, rows: List[dict], seconds: float) -> None:
    """``--batch``: a line per stream, the totals as a table, every stream's report in --json."""
    report = {"batch": args.input, "model": model.name, "variant": options.variant, "videos": len(rows),
              "devices": len(mesh.devices), "seconds": seconds, "bytes": sum(r["bytes"] for r in rows)}
    for r in rows:
        quality = "".join(f", {k} {r[k]:.4f}" for k in ("psnr", "lpips") if isinstance(r.get(k), float))
        print(f"{cli.printable(r['output'])}: {r['frames']} frames, {r['gops']} GOPs, {r['bytes']:,} B, "
              f"{r['bpp']:.5f} bpp{quality}")
    cli.print_table(report)
    if args.json:
        cli.write_json(args.json, {**report, "streams": rows})


def _model(args, mesh):
    """The model of ``--model`` (its DiT read onto ``mesh``'s weight shards); refuses a ``--prompt`` it cannot take."""
    model = cli.model_from_args(args, mesh)
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


def _check_batch_outputs(args, inputs) -> None:
    """Before any work: the output directory, its streams (new, none of them an input), the
    --decoded / --compare directories and --json."""
    items = _items(args)
    for flag, path in (("--batch", args.output), ("--decoded", args.decoded), ("--compare", args.compare)):
        if path and os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"{flag} needs an output directory, {path} is a file")
    outputs = [p for it in items for p in (it.output, it.decoded, it.compare) if p]
    existing = [o for o in outputs if os.path.lexists(o)]
    if existing:
        raise ValueError(f"{existing[0]} exists (a batch never replaces outputs; {len(existing)} would be)")
    inputs = tuple(inputs) + tuple(it.input for it in items)
    for out in outputs:
        cli.check_not_input(out, inputs)
    if args.resume:
        for it in items:
            cli.check_not_input(journal_path(it.output, 0), inputs)
    for directory in {os.path.dirname(o) for o in outputs}:
        parent = os.path.abspath(directory)
        while not os.path.isdir(parent):  # the directories that do not exist yet are created
            parent = os.path.dirname(parent)
        probe_writable(parent)
    cli.check_outputs(files=(args.json,), inputs=inputs + tuple(outputs))


cli.callable_module(__name__, api.encode)

if __name__ == "__main__":
    cli.entry_point(main)
