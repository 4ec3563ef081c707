"""Shared command-line plumbing: one-line errors, model option, progress, tables and JSON."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import types
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax

from gvc_jax import api, compile_cache
from gvc_jax.codec.format.bitstream import BitstreamError
from gvc_jax.codec.gop.loop import Progress
from gvc_jax.codec.session import DriftError, ModelMismatchError
from gvc_jax.evaluation import (
    DEFAULT_METRICS,
    MULTI_PROCESS_DEFAULT_METRICS,
    STREAMING,
    RunningEval,
    fit_metrics,
    parse_metrics,
)
from gvc_jax.io.atomic import atomic_write_bytes, emergency_cleanup, probe_writable
from gvc_jax.io.video_writer import check_output
from gvc_jax.models.checkpoint import CheckpointError
from gvc_jax.parallel import init_distributed
from gvc_jax.pixels import VideoError


class Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C (outputs in progress are removed), exit 143."""

def _on_sigterm(signum, frame):
    raise Terminated()


def user_error_types() -> tuple:
    return (VideoError, BitstreamError, CheckpointError, ModelMismatchError, DriftError, ValueError, OSError)


def run_main(main: Callable[[List[str]], int], argv=None) -> int:
    """Run ``main`` turning user errors into ``error: ...`` on stderr and exit status 2."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a user error
        if "--debug" in argv or not isinstance(exc, user_error_types()):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {printable(msg)}", file=sys.stderr)
        return 2


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="DIR",
                   help="converted checkpoint directory (python -m weights_convert); default: the embedded "
                        "default model; 'preset:NAME' = randomly initialised preset (testing)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="DiT weights and matmuls (norms and modulation stay float32): auto = bfloat16 on GPU / TPU, "
                        "float32 on CPU; decode with the encoder's setting to reproduce it exactly")
    p.add_argument("--attention", default="auto", choices=("auto", "chunked", "xla", "cudnn", "splash"),
                   help="attention kernel: auto = cuDNN flash (GPU, bf16), splash (TPU), chunked (CPU)")
    p.add_argument("--vae-convs", default="exact", choices=("exact", "fast"),
                   help="VAE 3D convs: exact (default: XLA's 3D conv) or fast (as 2D convs and matmuls: about 4.5x "
                        "faster VAE on CPU, equal up to ~1e-6, not bit for bit; decode FLF2V / I2V with the "
                        "encoder's setting to reproduce it exactly)")
    p.add_argument("--devices", type=int, default=None, metavar="N",
                   help="code the GOPs of a wave side by side, one per device, on the first N local devices "
                        "(default: all); the stream and the video do not depend on N")
    p.add_argument("--weight-shards", type=int, default=1, metavar="S",
                   help="split the DiT's weights over groups of S devices (for models that do not fit on one); "
                        "N/S GOPs run side by side (default 1: weights replicated)")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="do not keep compiled programs under $GVC_JAX_CACHE/xla (default ~/.cache/gvc-jax/xla); "
                        "with the cache a second run compiles nothing (same bytes)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write results as JSON ('-' = stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def model_from_args(args, mesh):
    """The model of ``add_model_args``'s flags, read onto ``mesh`` (its weight shards), after the
    compilation cache is set up (``compile_cache``; off with ``--no-compile-cache``)."""
    if getattr(args, "no_compile_cache", False):
        compile_cache.disable()
    return api.get_model(args.model, dtype=args.dtype, attention=args.attention,
                         vae_convs=getattr(args, "vae_convs", None), mesh=mesh)


def add_codec_args(p: argparse.ArgumentParser, groups: Optional[Dict[str, Any]] = None,
                   only: Optional[Sequence[str]] = None) -> None:
    """The flags of the ``CodecOptions`` fields (``only``: these fields), built from the fields'
    declarations (``api._option``: flags, group, help, type), into ``groups`` (argument groups by
    name, made as needed). Every flag defaults to None, so ``CodecOptions.from_args`` applies a preset
    and then only the flags given; the help shows the field's default."""
    groups = {} if groups is None else groups
    base = api.CodecOptions()
    for f in api.option_fields():
        if only is not None and f.name not in only:
            continue
        meta = f.metadata
        group = groups.get(meta["group"])
        if group is None:
            group = groups[meta["group"]] = p.add_argument_group(meta["group"])
        default = getattr(base, f.name)
        shown = "" if default is None else f" (default {default})"
        group.add_argument(*meta["flags"], dest=f.name, default=None, help=meta["help"] + shown, **meta["argparse"])


def add_distributed_args(p: argparse.ArgumentParser, share: str) -> None:
    """``--distributed`` and its settings; ``share``: what each process does (for the help)."""
    d = p.add_argument_group("several hosts (jax.distributed)")
    d.add_argument("--distributed", action="store_true",
                   help=f"run as one of several processes: {share}. Cloud TPU: no other flag (detected); "
                        "GPU / CPU clusters: the flags below or the usual environment variables")
    d.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="process 0's address")
    d.add_argument("--num-processes", type=int, default=None, metavar="N")
    d.add_argument("--process-id", type=int, default=None, metavar="I")
    d.add_argument("--init-timeout", type=float, default=DEFAULT_INIT_TIMEOUT_S, metavar="SECONDS",
                   help="give up (exit 2 with a one-line error) if the processes have not all joined within "
                        "this many seconds (default %(default)g)")


DEFAULT_INIT_TIMEOUT_S = 60.0
MAX_INIT_TIMEOUT_S = 86400.0


def parse_coordinator(text: str) -> tuple:
    """``HOST:PORT`` (IPv6 hosts in brackets, ``[::1]:1234``) -> (host, port); ValueError if malformed."""
    host, sep, port = str(text).rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    ok_host = bool(host) and len(host) <= 253 and all(c.isalnum() or c in ".-_:" for c in host)
    if not sep or not ok_host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"--coordinator must be HOST:PORT with a port in [1, 65535], got {text!r}")
    return host, int(port)


def start_distributed(args) -> bool:
    """Validate the flags of ``add_distributed_args``; with ``--distributed`` join the other
    processes (``parallel.init_distributed``) before any JAX work, exiting with status 2 and a
    one-line error if they have not all joined within ``--init-timeout`` seconds. -> whether this
    process writes the outputs (process 0, or the only process)."""
    given = args.coordinator or args.num_processes is not None or args.process_id is not None
    if given and not args.distributed:
        raise ValueError("--coordinator, --num-processes and --process-id need --distributed")
    timeout = args.init_timeout
    if not (timeout == timeout and 0 < timeout <= MAX_INIT_TIMEOUT_S):  # also refuses nan
        raise ValueError(f"--init-timeout must be in (0, {MAX_INIT_TIMEOUT_S:g}] seconds, got {timeout}")
    if not args.distributed:
        return True
    if args.coordinator is not None:
        parse_coordinator(args.coordinator)
    if args.num_processes is not None and args.num_processes < 1:
        raise ValueError("--num-processes must be >= 1")
    if args.process_id is not None and args.num_processes is not None and not 0 <= args.process_id < args.num_processes:
        raise ValueError(f"--process-id must be in [0, {args.num_processes})")
    if args.process_id is not None and args.process_id < 0:
        raise ValueError("--process-id must be >= 0")
    import threading


    joined = threading.Event()

    def give_up() -> None:  # JAX's own deadline aborts the process with a C++ stack trace
        if not joined.wait(timeout):
            where = f" at {args.coordinator}" if args.coordinator else ""
            print(f"error: the processes did not all join{where} within --init-timeout {timeout:g} s "
                  "(unreachable coordinator, or a process that did not start)", file=sys.stderr, flush=True)
            os._exit(2)

    threading.Thread(target=give_up, name="gvc-init-timeout", daemon=True).start()
    init_distributed(args.coordinator, args.num_processes, args.process_id,
                     timeout=int(timeout) + INIT_TIMEOUT_MARGIN_S)
    joined.set()
    import jax

    return jax.process_index() == 0


INIT_TIMEOUT_MARGIN_S = 30  # JAX's own deadline comes after ours, so that ours is the one that ends it


def entry_point(main: Callable[[List[str]], int]) -> None:
    """``python -m ...``: run ``main`` with SIGTERM handled like Ctrl-C; exit with its status.

    After an interruption the process leaves with ``os._exit`` once cleanup has run, so that
    XLA's worker threads cannot crash the interpreter's shutdown.
    """
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.unraisablehook = _redeliver_interrupts(sys.unraisablehook)
    _start_watchdog()
    code = run_main(main)
    if code in (130, 143):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


INTERRUPT_GRACE_S = 5.0


def _redeliver_interrupts(default_hook):
    """An interrupt raised inside a callback Python cannot propagate from (e.g. a garbage-collector
    callback) is "ignored" with a traceback; deliver it to the main thread again instead."""
    import _thread
    import threading

    def hook(unraisable) -> None:
        signum = {KeyboardInterrupt: signal.SIGINT, Terminated: signal.SIGTERM}.get(type(unraisable.exc_value))
        if signum is None:
            default_hook(unraisable)
        else:  # from another thread, so that it is raised in the main thread's code, not in this hook
            threading.Timer(0.05, _thread.interrupt_main, args=(signum,)).start()

    return hook


def _start_watchdog(grace: float = INTERRUPT_GRACE_S) -> None:
    """Make Ctrl-C / SIGTERM effective even while the main thread waits inside XLA.

    Python runs signal handlers only when the main thread executes bytecode; a long compiled
    trajectory or an XLA compilation can hold it for a whole GOP. The C-level handler writes the
    signal number to a wakeup pipe at once; this thread reads it and, if the process has not
    finished unwinding ``grace`` seconds later, removes the outputs in progress
    (``gvc_jax.io.atomic.emergency_cleanup``) and exits 130 / 143 itself.
    """
    import threading
    import time

    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except ValueError:  # not the main thread
        return

    def watch() -> None:
        signum = os.read(r, 1)[0]
        time.sleep(grace)

        emergency_cleanup()
        print("interrupted" if signum == signal.SIGINT else "terminated", file=sys.stderr, flush=True)
        os._exit(130 if signum == signal.SIGINT else 143)

    threading.Thread(target=watch, name="gvc-signal-watchdog", daemon=True).start()


class _CallableModule(types.ModuleType):
    __api__: Callable

    def __call__(self, *args, **kwargs):
        return self.__api__(*args, **kwargs)


def callable_module(name: str, fn: Callable) -> None:
    """Make module ``name`` callable as ``fn``: ``from gvc_jax import encode; encode(video)``
    works whether ``gvc_jax.encode`` names the command-line module or the function."""
    mod = sys.modules[name]
    mod.__class__ = _CallableModule
    assert isinstance(mod, _CallableModule)
    mod.__api__ = fn


def progress_printer(quiet: bool):
    """A ``loop.Progress`` drawing a GOP-level bar (tqdm on stderr), with the current step when the
    compilation cache is off or ``GVC_JAX_STEP_PROGRESS=1`` (a program reporting its steps to the
    host is never cached: the trajectory then compiles in every run, the other programs still load)."""
    if quiet:
        return Progress()
    from tqdm import tqdm

    class Bars(Progress):
        wants_steps = compile_cache.ensure() is None or os.environ.get("GVC_JAX_STEP_PROGRESS", "") == "1"

        def __init__(self) -> None:
            self.bars: Dict[str, "tqdm"] = {}
            self.current: Optional["tqdm"] = None

        def gop(self, stage: str, done: int, total: int) -> None:
            bar = self.bars.get(stage)
            if bar is None:
                bar = self.bars[stage] = tqdm(total=total, desc=f"{stage} GOPs", unit="gop", file=sys.stderr)
                self.current = bar
            bar.update(done - bar.n)
            if done >= total:
                bar.close()

        def step(self, gop: int, step: int) -> None:
            if self.current is not None:
                self.current.set_postfix_str(f"GOP {gop} step {step + 1}", refresh=True)

    return Bars()


def printable(text: str) -> str:
    """``text`` with control characters (escape sequences, newlines, ...) shown escaped, so that a
    string from a stream or a file cannot drive the terminal."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _fmt(v: object) -> str:
    if isinstance(v, str):
        return printable(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v) if v else "-"
    return str(v)


def print_table(rows: Dict[str, object]) -> None:
    width = max(len(k) for k in rows)
    for k, v in rows.items():
        print(f"{k:<{width}}  {_fmt(v)}")


def emit_report(report: Dict[str, object], json_dest: str | None, details: Optional[dict] = None) -> None:
    """Print the report as a table (lists: one value per GOP); write it as JSON if asked, with
    ``details`` (e.g. per-frame metric values) in the JSON only."""
    print_table(report)
    if json_dest:
        write_json(json_dest, {**report, **(details or {})})


def add_metrics_arg(p, when: str) -> None:
    """``--metrics LIST`` (``evaluation.parse_metrics``), used ``when`` (for the help)."""
    p.add_argument("--metrics", default=None, metavar="LIST",
                   help=f"comma-separated metrics {when}: {', '.join(m.replace('_', '-') for m in STREAMING)} "
                        f"(default {','.join(m.replace('_', '-') for m in DEFAULT_METRICS)}, without dists with "
                        f"--distributed; DISTS needs frames of 32x32 or more); per-frame values go in --json")


def evaluator_for(metrics_arg: Optional[str], height: int, width: int):
    """The ``RunningEval`` of a ``--metrics`` value for frames of ``height`` x ``width``."""
    default = DEFAULT_METRICS if jax.process_count() == 1 else MULTI_PROCESS_DEFAULT_METRICS
    names = default if metrics_arg is None else parse_metrics(metrics_arg)
    return RunningEval(fit_metrics(names, height, width, requested=metrics_arg is not None))


def write_json(dest: str, payload: dict) -> None:
    text = json.dumps(payload, indent=2, default=float)
    if dest == "-":
        print(text)
        return

    atomic_write_bytes(dest, (text + "\n").encode())


def parse_size(text: str):
    """'WxH' -> (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one file: the same path, a symlink to it, or a hard link."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def check_not_input(output: str, inputs=()) -> None:
    """ValueError if ``output`` is one of ``inputs`` (``same_file``) or inside an input directory
    (a frame directory, a model directory): an output is never written onto what is read."""
    for i in inputs:
        if not i or i == "-":
            continue
        if same_file(output, i):
            raise ValueError(f"output {output} is the input {i}; refusing to overwrite an input")
        if os.path.isdir(i) and os.path.realpath(output).startswith(os.path.join(os.path.realpath(i), "")):
            raise ValueError(f"output {output} is inside the input directory {i}; refusing to write there")


def check_outputs(files=(), videos=(), inputs=()) -> None:
    """Validate output paths before any work starts: ``files`` (a stream, JSON, PNG, a journal)
    need an existing parent in which a file can really be created (a probe file is made and
    removed) and must not be a directory; ``videos`` must be writable by ``video_writer.VideoWriter`` (known
    format; an existing directory is never replaced). No output may be an input (``inputs``), the
    same path, a symlink or a hard link to one, and no two outputs may be one file. ``None`` and
    ``-`` (stdout) are skipped."""
    seen: List[str] = []
    for p, is_video in [(p, False) for p in files] + [(p, True) for p in videos]:
        if not p or p == "-":
            continue
        p = os.fspath(p)
        check_not_input(p, inputs)
        if any(same_file(p, q) for q in seen):
            raise ValueError(f"{p} is named as two different outputs")
        seen.append(p)
        if is_video:
            check_output(p)
            continue
        if os.path.isdir(p):
            raise ValueError(f"{p} is a directory, expected a file path")
        parent = os.path.dirname(os.path.abspath(p))
        if not os.path.isdir(parent):
            raise OSError(f"output directory {parent} does not exist")
        probe_writable(parent)
