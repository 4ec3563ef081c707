"""Shared command-line plumbing: one-line errors, model option, progress, tables and JSON."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable, Dict, List

USER_ERRORS: tuple = ()  # filled lazily: exception classes a user can cause


def user_error_types() -> tuple:
    from gvc_jax.codec.bitstream import BitstreamError
    from gvc_jax.codec.pipeline import DriftError, ModelMismatchError
    from gvc_jax.io import VideoError
    from gvc_jax.models.checkpoint import CheckpointError

    return (VideoError, BitstreamError, CheckpointError, ModelMismatchError, DriftError, ValueError, OSError)


def run_main(main: Callable[[List[str]], int], argv=None) -> int:
    """Run ``main`` turning user errors into ``error: ...`` on stderr and exit status 2."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a user error
        if "--debug" in argv or not isinstance(exc, user_error_types()):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="DIR",
                   help="converted checkpoint directory (python -m weights_convert); default: the embedded "
                        "default model; 'preset:NAME' = randomly initialised preset (testing)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write results as JSON ('-' = stdout)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def progress_printer(quiet: bool) -> Callable[[str, int, int], None]:
    """A GOP-level progress bar (tqdm on stderr) that also shows the current sampling step."""
    if quiet:
        return lambda *a: None
    from tqdm import tqdm

    from gvc_jax.codec.trajectory import set_step_hook

    bars: Dict[str, "tqdm"] = {}
    current: List["tqdm"] = []

    def on_step(step: int) -> None:
        if current:
            current[0].set_postfix_str(f"step {step + 1}", refresh=True)

    set_step_hook(on_step)

    def update(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=f"{stage} GOPs", unit="gop", file=sys.stderr)
            current[:] = [bar]
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v) if v else "-"
    return str(v)


def print_table(rows: Dict[str, object]) -> None:
    width = max(len(k) for k in rows)
    for k, v in rows.items():
        print(f"{k:<{width}}  {_fmt(v)}")


def emit_report(report: Dict[str, object], json_dest: str | None) -> None:
    """Print the report as a table (lists: one value per GOP); write it as JSON if asked."""
    print_table(report)
    if json_dest:
        write_json(json_dest, report)


def write_json(dest: str, payload: dict) -> None:
    text = json.dumps(payload, indent=2, default=float)
    if dest == "-":
        print(text)
        return
    from gvc_jax.io import atomic_write_bytes

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


def check_output_path(path: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise OSError(f"output directory {d} does not exist")
