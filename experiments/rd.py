"""Rate-distortion evaluation: gvc next to x264, x265, SVT-AV1 and VVC on the same frames.

    python experiments/rd.py CLIP --frames 33 --resize 256x144 --gvc-atoms 4 8 16 \\
        --gvc-model preset:tiny|DIR --baselines x264 x265 svtav1 vvc --out results/rd_bbb
    python experiments/rd.py --dataset uvg --data-dir DIR ... --out results/rd_uvg
    python experiments/rd.py --dataset uvg --data-dir DIR --protocol ctc96 --resize 832x480 ... --out OUT

CLIP is a video path (anything ``gvc_jax.io.video_reader.read_video`` reads) or a shipped sample name
("bigbuckbunny", "bikes"). The input is decoded once to raw uint8 frames (``--start``,
``--frames``, ``--resize WxH``); every codec codes exactly those frames:

- gvc at every ``--gvc-atoms`` M (and every ``--K`` given; one curve per K), stream bytes =
  the ``.gvc`` file (saved under ``OUT/streams/CLIP/``);
- each baseline at its quality ladder (``experiments/baselines.py``: elementary streams, one
  key frame per clip, SEI stripped; ``--ladder x265=51,45,39`` overrides a ladder).

Every point is evaluated against the raw frames with ``--metrics`` (``gvc_jax.evaluation``: the
names and checks of ``encode --eval --metrics``, plus ``vmaf``; default psnr,ms-ssim,lpips,dists;
``--vmaf`` adds vmaf); bpp = 8 * file bytes / (frames * W * H).

``--protocol`` sets the clip and GOP settings of a published protocol (explicit flags that
contradict it are refused):

- ``gvcc``: the original paper's (UVG at 720p, 3 GOPs of 33 frames): 33-frame GOPs, 99 frames
  (``--frames`` may give another multiple of 33), from frame 0, 1280x720 unless ``--resize`` says
  otherwise;
- ``ctc96``: the first 96 frames of each sequence (2026 generative-codec papers: UVG, MCL-JCV,
  HEVC-B at 1080p), at the native size or any ``--resize``; gvc codes them in 33-frame GOPs
  (the third padded to 33 and trimmed on decode).

Outputs in ``--out``:

- ``results.json``: one entry per point, written after every point (atomically). Resumable: a
  point whose key (clip, codec, all settings) is already there with all requested metrics is
  skipped. The clip settings (source, start, frames, size) are recorded; re-using an output
  directory with different ones is refused.
- ``results.md``: per-clip tables, BD-rates (on PSNR, LPIPS and DISTS, pchip Bjontegaard) of every
  curve against the anchor (``--anchor``, default x265), and a low-rate summary: gvc's LPIPS at
  its lowest rate against each baseline's LPIPS interpolated (pchip in log bpp) at the same bpp.
- ``plots/CLIP_METRIC.png``: bpp (log) against each metric of the run.

A gvc point also records the model's fingerprint; when the model behind ``--gvc-model`` changes
(e.g. a new default model) its gvc points are recomputed and the baseline points are kept.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import inspect
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import gvc_jax  # noqa: F401,E402  (XLA flags before jax)
from experiments import baselines as bl  # noqa: E402
from experiments import bjontegaard as bd  # noqa: E402
from experiments.rd_plot import plot_rd  # noqa: E402
from gvc_jax import cli  # noqa: E402
from gvc_jax.io.atomic import atomic_write_bytes  # noqa: E402
from gvc_jax.io.sample_clips import SAMPLE_CLIPS, sample_clip_path  # noqa: E402
from gvc_jax.io.video_reader import read_video  # noqa: E402
from gvc_jax.pixels import VideoError, resize_frames  # noqa: E402

DATASETS_MODULE = "experiments.datasets"  # dev-only: the tfds builders live with the experiments
FORMAT = "gvc-rd/1"
BASE_METRICS = ("psnr", "ms_ssim", "lpips")  # what every point had before --metrics (old results files)
BD_METRICS = ("psnr", "lpips", "dists")
DATASETS = ("uvg", "mcljcv", "hevcb")
TABLE_METRICS = (("psnr", "PSNR dB", "{:.2f}"), ("ms_ssim", "MS-SSIM", "{:.4f}"), ("lpips", "LPIPS", "{:.4f}"),
                 ("lpips_vgg", "LPIPS-VGG", "{:.4f}"), ("dists", "DISTS", "{:.4f}"), ("tlp", "tLP", "{:.4f}"),
                 ("warp", "warp err", "{:.4f}"), ("vmaf", "VMAF", "{:.2f}"))
BD_NAMES = {"psnr": ("PSNR", "BD-PSNR dB", "{:+.2f}", "{:.2f}"), "lpips": ("LPIPS", "BD-LPIPS", "{:+.4f}", "{:.4f}"),
            "dists": ("DISTS", "BD-DISTS", "{:+.4f}", "{:.4f}")}
# name -> (fixed settings, defaults an explicit flag may replace); see the module docstring
PROTOCOLS = {
    "gvcc": ({"gop_frames": 33, "start": 0}, {"frames": 99, "resize": "1280x720"}),
    "ctc96": ({"frames": 96, "start": 0}, {"gop_frames": 33}),
}
DEFAULTS = {"frames": 33, "start": 0, "gop_frames": 33, "resize": None}


class RDError(RuntimeError):
    """A user-caused problem with an evaluation run (bad arguments, mismatching results file)."""


# ----------------------------------------------------------------------------- inputs


@dataclass
class Clip:
    """Raw frames every codec codes: ``frames`` uint8 [F, H, W, 3]."""

    name: str
    frames: np.ndarray
    fps: float
    info: dict  # source, start, frames, width, height, fps (recorded in the results file)


def parse_size(text: Optional[str]):
    """"256x144" -> (256, 144) (width, height); None -> None (``gvc_jax.cli.parse_size``, RDError)."""
    if text is None:
        return None
    try:
        return cli.parse_size(str(text))
    except argparse.ArgumentTypeError as err:
        raise RDError(f"--resize: {err}") from None


def load_clip(source: str, *, frames: Optional[int], start: int = 0, resize=None) -> Clip:
    """A video path or a sample name -> ``Clip`` (decoded once, resized, first ``frames`` frames)."""
    path = sample_clip_path(source) if source in SAMPLE_CLIPS and not os.path.exists(source) else source
    video, fps = read_video(path, max_frames=frames, start=start, resize=resize)
    name = os.path.splitext(os.path.basename(os.path.normpath(source)))[0] or "clip"
    info = {"source": os.path.abspath(path), "start": int(start), "frames": int(video.shape[0]),
            "width": int(video.shape[2]), "height": int(video.shape[1]), "fps": float(fps)}
    return Clip(name, video, float(fps), info)


def load_dataset(name: str, data_dir: Optional[str], *, frames: Optional[int], start: int = 0, resize=None,
                 only: Optional[Sequence[str]] = None):
    """Clips of a dataset through ``experiments.datasets.load_clips(name, data_dir, ...)`` (a generator)."""
    if name not in DATASETS:
        raise RDError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    if importlib.util.find_spec(DATASETS_MODULE) is None:
        raise RDError(f"--dataset needs the {DATASETS_MODULE} module (dataset builders), which this checkout lacks")
    if not data_dir:
        raise RDError("--dataset needs --data-dir DIR")
    load_clips = importlib.import_module(DATASETS_MODULE).load_clips

    accepted = inspect.signature(load_clips).parameters
    skip = 0 if "start" in accepted else int(start)  # frames to drop here when the loader cannot
    kwargs = {}
    for key, value in (("max_frames", None if frames is None else frames + skip), ("start", start),
                       ("resize", resize)):
        if key in accepted:
            kwargs[key] = value
    for clip_name, video, fps in load_clips(name, data_dir, **kwargs):
        if only and clip_name not in only:
            continue
        video = np.asarray(video)[skip:]
        if frames:
            video = video[:frames]
        video = np.ascontiguousarray(video.astype(np.uint8, copy=False))
        if resize is not None:
            video = resize_frames(video, resize)
        info = {"source": f"{name}:{clip_name}@{os.path.abspath(data_dir)}", "start": int(start),
                "frames": int(video.shape[0]), "width": int(video.shape[2]), "height": int(video.shape[1]),
                "fps": float(fps)}
        yield Clip(str(clip_name), video, float(fps), info)


# ----------------------------------------------------------------------------- results file


class ResultStore:
    """``results.json``: clip settings and one record per point; saved atomically on every change."""

    def __init__(self, path: str):
        self.path = path
        self.data = {"format": FORMAT, "clips": {}, "points": []}
        if os.path.exists(path):
            try:
                with open(path) as fh:
                    data = json.load(fh)
            except (OSError, ValueError) as err:
                raise RDError(f"cannot read results file {path}: {err}") from None
            if data.get("format") != FORMAT:
                raise RDError(f"{path} is not a {FORMAT} results file")
            self.data = data

    @property
    def points(self) -> List[dict]:
        return self.data["points"]

    def register_clip(self, clip: Clip) -> None:
        """Record the clip's settings, or refuse if the file holds the same clip made differently."""
        old = self.data["clips"].get(clip.name)
        if old is not None:
            diff = [k for k in ("source", "start", "frames", "width", "height", "protocol")
                    if old.get(k) != clip.info.get(k)]
            if diff:
                raise RDError(
                    f"{self.path} holds clip {clip.name!r} made with other settings ({', '.join(diff)}: "
                    f"{[old.get(k) for k in diff]} vs {[clip.info.get(k) for k in diff]}); use another --out")
            return
        self.data["clips"][clip.name] = clip.info
        self.save()

    def find(self, key: str) -> Optional[dict]:
        for p in self.points:
            if p["key"] == key:
                return p
        return None

    def put(self, record: dict) -> None:
        self.data["points"] = [p for p in self.points if p["key"] != record["key"]] + [record]
        self.save()

    def save(self) -> None:
        text = json.dumps(self.data, indent=1, sort_keys=False)
        atomic_write_bytes(self.path, text.encode())


# ----------------------------------------------------------------------------- points


@dataclass
class PointSpec:
    """One point to run on one clip."""

    codec: str                    # "gvc" or a baseline name
    curve: str                    # curve label (one line in the plots)
    setting: str                  # short human description, e.g. "M=8" or "crf=51"
    params: dict                  # everything that defines the point
    key_parts: tuple = field(default=())

    def key(self, clip: str) -> str:
        return "|".join([clip, self.codec, *self.key_parts])

    @property
    def stem(self) -> str:
        """File stem of the point's stream: readable setting plus a digest of the full key."""
        import hashlib

        digest = hashlib.sha1("|".join(self.key_parts).encode()).hexdigest()[:8]
        return f"{self.codec}_{self.setting.replace('=', '')}_{digest}"


def gvc_param_key(params: dict) -> tuple:
    names = ("model", "K", "M", "steps", "tail", "g_scale", "shift", "codebook", "seed", "gop_frames")
    key = tuple(f"{n}={'auto' if params.get(n) is None else params[n]}" for n in names)
    variant = params.get("variant", "t2v")
    return key if variant == "t2v" else key + (f"variant={variant}",)  # t2v keys as before the variants


def gvc_spec(params: dict, curve: str = "gvc", setting: Optional[str] = None) -> PointSpec:
    return PointSpec("gvc", curve, setting or f"M={params['M']}", dict(params), gvc_param_key(params))


def baseline_spec(codec: str, q: int, preset: Optional[str]) -> PointSpec:
    c = bl.get_codec(codec)
    preset = bl.DEFAULT_PRESETS[codec] if preset is None else str(preset)
    params = {c.q_option: int(q), "preset": preset}
    return PointSpec(codec, codec, f"{c.q_option}={int(q)}", params, (f"{c.q_option}={int(q)}", f"preset={preset}"))


class GvcRunner:
    """Loads the gvc model on first use (a run with no gvc points never loads it) and codes points."""

    def __init__(self, model_spec: Optional[str], verify_decode: bool = False):
        self.model_spec = model_spec
        self.verify_decode = verify_decode
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from gvc_jax.models.registry import resolve_model

            self._model = resolve_model(self.model_spec)
        return self._model

    @staticmethod
    def options(params: dict):
        """The point's ``CodecOptions`` (I2V: adaptive atoms, twice M on the last latent frame): the one
        resolver that the command line and the API use too."""
        from gvc_jax.api import CodecOptions

        m, variant = int(params["M"]), params.get("variant", "t2v")
        shift = params.get("shift")
        return CodecOptions(variant=variant, atoms=m, tail_atoms=2 * m if variant == "i2v" else None,
                            codebook_size=CodecOptions.codebook_size if params.get("K") is None else int(params["K"]),
                            steps=int(params["steps"]), tail=int(params["tail"]), g_scale=float(params["g_scale"]),
                            shift=None if shift is None else float(shift), codebook=params["codebook"],
                            seed=int(params["seed"]), gop_frames=int(params["gop_frames"]))

    def sampler(self, params: dict, height: int, width: int):
        return self.options(params).sampler(height, width, int(params["gop_frames"]))

    def run(self, clip: Clip, params: dict, stream_path: str) -> dict:
        from gvc_jax.codec.session import decode_video, encode_video

        try:
            options = self.options(params)
            sampler = options.sampler(clip.frames.shape[1], clip.frames.shape[2], int(params["gop_frames"]))
            t0 = time.perf_counter()
            variant = options.variant_object()
            result = encode_video(clip.frames, clip.fps, self.model, sampler, gop_frames=int(params["gop_frames"]),
                                  variant=variant)
            seconds = time.perf_counter() - t0
        except ValueError as err:  # bad sampler / codebook / GOP settings
            raise RDError(f"gvc ({', '.join(gvc_param_key(params))}): {err}") from None
        atomic_write_bytes(stream_path, result.stream)
        out = {"bytes": len(result.stream), "video": result.video, "seconds": seconds, "decode_seconds": None,
               "path": stream_path, "model_fingerprint": self.model.fingerprint, "resolved": {
                   "K": sampler.K, "shift": sampler.shift, "model": self.model.name}}
        if self.verify_decode:
            t0 = time.perf_counter()
            dec = decode_video(result.stream, self.model)
            out["decode_seconds"] = time.perf_counter() - t0
            out["decode_matches"] = bool(np.array_equal(dec.video, result.video))
        return out


def evaluate_video(ref: np.ndarray, dist: np.ndarray, metrics: Sequence[str], fps: float) -> dict:
    """The one metrics entry point (``gvc_jax.evaluation.evaluate_video``), for gvc and the baselines alike."""
    from gvc_jax.evaluation import evaluate_video as evaluate

    return {k: float(v) for k, v in evaluate(ref, dist, tuple(metrics), fps=fps).items()}


def parse_metric_names(args) -> tuple:
    """``--metrics`` (+ ``--vmaf``) -> metric names, checked as ``encode --eval --metrics`` checks them
    (VMAF allowed: whole videos here); RDError on an unknown name."""
    from gvc_jax.evaluation import BATCH_DEFAULT_METRICS, parse_metrics

    text = getattr(args, "metrics", None)
    try:
        names = BATCH_DEFAULT_METRICS if text is None else parse_metrics(text, whole_video=True)
    except ValueError as err:
        raise RDError(f"--metrics: {err}") from None
    return tuple(names) + (("vmaf",) if getattr(args, "vmaf", False) and "vmaf" not in names else ())


def clip_metrics(names: Sequence[str], clip: Clip, requested: bool) -> tuple:
    """``names`` that ``clip`` can be measured with (``evaluation.fit_metrics``: DISTS >= 32x32, the pair
    metrics >= 2 frames; left out when defaulted, an RDError when asked for)."""
    from gvc_jax.evaluation import fit_metrics

    f, h, w = clip.frames.shape[:3]
    try:
        return fit_metrics(tuple(names), h, w, requested=requested, frames=f)
    except ValueError as err:
        raise RDError(f"--metrics on {clip.name}: {err}") from None


def apply_protocol(args) -> None:
    """Resolve ``--frames``, ``--start``, ``--gop-frames`` and ``--resize`` from ``--protocol`` (if any) and
    the defaults; an explicit flag that contradicts a protocol's fixed setting is an RDError."""
    protocol = getattr(args, "protocol", None)
    fixed, defaults = PROTOCOLS.get(protocol, ({}, {})) if protocol else ({}, {})
    if protocol and protocol not in PROTOCOLS:
        raise RDError(f"unknown protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")
    for key in ("frames", "start", "gop_frames", "resize"):
        if not hasattr(args, key):
            continue
        given = getattr(args, key)
        if key in fixed:
            if given is not None and given != fixed[key]:
                flag = "--" + key.replace("_", "-")
                raise RDError(f"--protocol {protocol} codes {flag} {fixed[key]}, got {flag} {given}")
            setattr(args, key, fixed[key])
        elif given is None:
            setattr(args, key, defaults.get(key, DEFAULTS[key]))
    if protocol == "gvcc" and args.frames % 33:
        raise RDError(f"--protocol gvcc codes whole 33-frame GOPs: --frames must be a multiple of 33, "
                      f"got {args.frames}")


def run_points(clip: Clip, specs: Sequence[PointSpec], store: ResultStore, out_dir: str, metrics: Sequence[str],
               gvc: GvcRunner, desc: str = "points") -> List[dict]:
    """Run every spec on ``clip`` that the store lacks; returns the records of all specs.

    A point that was coded before but lacks one of ``metrics`` is measured again from its stream file
    when that is still there (baselines: decoded with ffmpeg; gvc: decoded with the same model), else
    coded again."""
    from tqdm import tqdm

    store.register_clip(clip)
    stream_dir = os.path.join(out_dir, "streams", clip.name)
    todo = [s for s in specs if _needs_run(s, store.find(s.key(clip.name)), metrics, gvc)]
    f, h, w = clip.frames.shape[:3]
    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc=f"{desc} {clip.name}", unit="pt",
               dynamic_ncols=True)
    try:
        for spec in todo:
            bar.set_postfix_str(f"{spec.curve} {spec.setting}")
            old = store.find(spec.key(clip.name))
            video = _stored_decode(spec, old, clip, out_dir, gvc, metrics)
            if video is not None:
                assert old is not None
                store.put({**old, **evaluate_video(clip.frames, video, metrics, clip.fps)})
                bar.update(1)
                continue
            if spec.codec == "gvc":
                res = gvc.run(clip, spec.params, os.path.join(stream_dir, spec.stem + ".gvc"))
            else:
                q = spec.params[bl.get_codec(spec.codec).q_option]
                res = bl.encode_baseline(spec.codec, clip.frames, clip.fps, q, stream_dir,
                                         preset=spec.params["preset"], name=spec.stem)
            scores = evaluate_video(clip.frames, res["video"], metrics, clip.fps)
            seconds_of_video = f / clip.fps
            record = {
                "key": spec.key(clip.name), "clip": clip.name, "codec": spec.codec, "curve": spec.curve,
                "setting": spec.setting, "params": spec.params, "bytes": res["bytes"],
                "bpp": 8.0 * res["bytes"] / (f * w * h), "kbps": 8.0 * res["bytes"] / seconds_of_video / 1000.0,
                **scores, "enc_seconds": res["seconds"], "dec_seconds": res.get("decode_seconds"),
                "stream": os.path.relpath(res["path"], out_dir),
                "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            for extra in ("model_fingerprint", "resolved", "decode_matches", "args"):
                if extra in res:
                    record[extra] = res[extra]
            store.put(record)
            bar.update(1)
    finally:
        bar.close()
    return [store.find(s.key(clip.name)) for s in specs]


def _stored_decode(spec: PointSpec, record: Optional[dict], clip: Clip, out_dir: str, gvc: GvcRunner,
                   metrics: Sequence[str]) -> Optional[np.ndarray]:
    """The decoded video of a point coded before (same settings and, for gvc, same model) whose stream
    file is still there and has the recorded size; None when the point must be coded again."""
    if record is None or not record.get("stream") or all(m in record for m in metrics):
        return None
    path = os.path.join(out_dir, record["stream"])
    if not os.path.isfile(path) or os.path.getsize(path) != record.get("bytes"):
        return None
    f, h, w = clip.frames.shape[:3]
    if spec.codec == "gvc":
        if record.get("model_fingerprint") != gvc.model.fingerprint:
            return None
        from gvc_jax.codec.session import decode_video

        with open(path, "rb") as fh:
            video = np.asarray(decode_video(fh.read(), gvc.model).video)
    else:
        from gvc_jax.pixels import crop

        video = crop(bl.decode_stream(path, w + w % 2, h + h % 2), h, w)
    return video if video.shape == clip.frames.shape else None


def _done(record: Optional[dict], metrics: Sequence[str]) -> bool:
    return record is not None and all(m in record for m in metrics)


def _needs_run(spec: "PointSpec", record: Optional[dict], metrics: Sequence[str], gvc: "GvcRunner") -> bool:
    """A point is (re)run when it lacks a metric or, for gvc, was coded with other model weights."""
    if not _done(record, metrics):
        return True
    return spec.codec == "gvc" and record.get("model_fingerprint") != gvc.model.fingerprint


# ----------------------------------------------------------------------------- analysis


def curves_of(points: Sequence[dict]) -> Dict[str, List[dict]]:
    """Points grouped by curve label, each sorted by bpp."""
    out: Dict[str, List[dict]] = {}
    for p in points:
        out.setdefault(p["curve"], []).append(p)
    def order(label: str):  # gvc curves first, then the baselines in their usual order
        codec = out[label][0]["codec"]
        rank = 0 if codec == "gvc" else 1 + list(bl.CODECS).index(codec) if codec in bl.CODECS else len(bl.CODECS) + 1
        return (rank, label)

    return {k: sorted(out[k], key=lambda p: p["bpp"]) for k in sorted(out, key=order)}


def _xy(points: Sequence[dict], metric: str):
    pts = [p for p in points if metric in p and p[metric] is not None and math.isfinite(p[metric])]
    return [p["bpp"] for p in pts], [p[metric] for p in pts]


def bd_table(points: Sequence[dict], anchor: str, metrics: Sequence[str] = BD_METRICS) -> List[dict]:
    """BD-rate (%) and BD-quality of every curve against ``anchor`` per metric (None + reason if n/a)."""
    curves = curves_of(points)
    rows = []
    if anchor not in curves:
        return rows
    for label, pts in curves.items():
        if label == anchor:
            continue
        row = {"curve": label}
        for m in metrics:
            (ra, qa), (rt, qt) = _xy(curves[anchor], m), _xy(pts, m)
            hib = bd.higher_is_better(m)
            for kind, fn, axis in (("rate", bd.bd_rate, "quality"), ("quality", bd.bd_quality, "rate")):
                try:
                    row[f"bd_{kind}_{m}"] = fn(ra, qa, rt, qt, higher_is_better=hib)
                    row[f"bd_{kind}_{m}_over"] = bd.overlap(ra, qa, rt, qt, higher_is_better=hib, axis=axis)
                except bd.BDError as err:
                    row[f"bd_{kind}_{m}"] = None
                    row[f"bd_{kind}_{m}_why"] = str(err)
        rows.append(row)
    return rows


def low_rate_summary(points: Sequence[dict], metric: str = "lpips") -> List[dict]:
    """For each gvc curve's lowest-rate point: every baseline's ``metric`` at the same bpp.

    The baseline value is interpolated (pchip in log bpp on its Pareto front) when the bpp is
    inside the baseline's range; otherwise its lowest-rate point is reported instead. Also the
    bpp the baseline needs to reach gvc's value, when that is inside its range.
    """
    curves = curves_of(points)
    hib = bd.higher_is_better(metric)
    out = []
    for label, pts in curves.items():
        if not pts or pts[0]["codec"] != "gvc" or metric not in pts[0]:
            continue
        g = pts[0]
        for other, opts in curves.items():
            if not opts or opts[0]["codec"] == "gvc":
                continue
            rates, values = _xy(opts, metric)
            row = {"gvc_curve": label, "gvc_setting": g["setting"], "bpp": g["bpp"], "gvc": g[metric],
                   "baseline": other, "baseline_at_bpp": None, "baseline_min_bpp": min(rates) if rates else None,
                   "baseline_at_min_bpp": values[int(np.argmin(rates))] if rates else None, "bpp_for_same": None}
            try:
                row["baseline_at_bpp"] = bd.quality_at_rate(rates, values, g["bpp"], higher_is_better=hib)
            except bd.BDError:
                pass
            try:
                row["bpp_for_same"] = bd.rate_at_quality(rates, values, g[metric], higher_is_better=hib)
            except bd.BDError:
                pass
            out.append(row)
    return out


def _fmt(value, spec: str = "{:.4g}") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return spec.format(value)


def _bd_cell(row: dict, kind: str, metric: str, spec: str, range_spec: str) -> str:
    value = row.get(f"bd_{kind}_{metric}")
    if value is None:
        return "n/a"
    lo, hi = row[f"bd_{kind}_{metric}_over"]
    return f"{spec.format(value)} [{range_spec.format(lo)}, {range_spec.format(hi)}]"


def clip_markdown(name: str, info: dict, points: Sequence[dict], anchor: str, metrics: Sequence[str]) -> List[str]:
    cols = [(m, t, f) for m, t, f in TABLE_METRICS if m in metrics]
    protocol = f", protocol {info['protocol']}" if info.get("protocol") else ""
    lines = [f"## {name}", "",
             f"{info.get('frames')} frames, {info.get('width')}x{info.get('height')}, {info.get('fps'):g} fps, "
             f"source `{info.get('source')}` (start {info.get('start')}{protocol})", "",
             "| curve | setting | bytes | bpp | kbps | " + " | ".join(t for _, t, _ in cols) + " | enc s | dec s |",
             "|---|---|---:|---:|---:|" + "---:|" * len(cols) + "---:|---:|"]
    for label, pts in curves_of(points).items():
        for p in pts:
            vals = " | ".join(_fmt(p.get(m), f) for m, _, f in cols)
            lines.append(f"| {label} | {p['setting']} | {p['bytes']} | {p['bpp']:.5f} | {p['kbps']:.2f} | {vals} | "
                         f"{_fmt(p.get('enc_seconds'), '{:.1f}')} | {_fmt(p.get('dec_seconds'), '{:.1f}')} |")
    bd_metrics = [m for m in BD_METRICS if m in metrics]
    rows = bd_table(points, anchor, bd_metrics)
    lines += ["", f"### Bjontegaard deltas against {anchor}", ""]
    if not rows:
        lines.append(f"(no {anchor} curve: no BD numbers)")
    else:
        heads = ([f"BD-rate ({BD_NAMES[m][0]})" for m in bd_metrics] + [BD_NAMES[m][1] for m in bd_metrics])
        lines += ["BD-rate: % rate change at equal quality (negative = fewer bits than the anchor). "
                  "BD-PSNR in dB, BD-LPIPS / BD-DISTS in their own units (negative = better). pchip interpolation "
                  "over the overlapping range, shown in brackets (quality range for BD-rate, bpp range "
                  "for BD-quality): a narrow range means a fragile number. n/a = no overlap.", "",
                  "| curve | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
        for r in rows:
            cells = ([_bd_cell(r, "rate", m, "{:+.1f} %", BD_NAMES[m][3]) for m in bd_metrics]
                     + [_bd_cell(r, "quality", m, BD_NAMES[m][2], "{:.4f}") for m in bd_metrics])
            lines.append(f"| {r['curve']} | " + " | ".join(cells) + " |")
    summary = low_rate_summary(points)
    if summary:
        lines += ["", "### gvc at its lowest rate: LPIPS against the baselines at the same bpp", "",
                  "| gvc curve | setting | bpp | gvc LPIPS | baseline | baseline LPIPS at that bpp | "
                  "baseline's lowest bpp (LPIPS) | baseline bpp for gvc's LPIPS |",
                  "|---|---|---:|---:|---|---:|---:|---:|"]
        for s in summary:
            at = _fmt(s["baseline_at_bpp"], "{:.4f}") if s["baseline_at_bpp"] is not None else "n/a (outside range)"
            low = (f"{s['baseline_min_bpp']:.5f} ({s['baseline_at_min_bpp']:.4f})"
                   if s["baseline_min_bpp"] is not None else "n/a")
            need = (f"{s['bpp_for_same']:.5f} ({s['bpp_for_same'] / s['bpp']:.1f}x)"
                    if s["bpp_for_same"] is not None else "n/a (outside range)")
            lines.append(f"| {s['gvc_curve']} | {s['gvc_setting']} | {s['bpp']:.5f} | {s['gvc']:.4f} | "
                         f"{s['baseline']} | {at} | {low} | {need} |")
    return lines + [""]


def write_report(store: ResultStore, out_dir: str, anchor: str, metrics: Sequence[str],
                 clips: Optional[Sequence[str]] = None, title: str = "Rate-distortion results") -> str:
    """Write ``results.md`` and the plots from the results file; returns the markdown path."""
    clips = list(clips or store.data["clips"])
    plot_dir = os.path.join(out_dir, "plots")
    lines = [f"# {title}", "",
             "bpp = 8 x file bytes / (frames x W x H); baselines: elementary streams, one key frame per clip, "
             "SEI removed. Metrics on RGB against the raw frames (LPIPS: AlexNet, lower is better).", ""]
    all_bd = []
    bd_metrics = [m for m in BD_METRICS if m in metrics]
    for name in clips:
        pts = [p for p in store.points if p["clip"] == name]
        if not pts:
            continue
        lines += clip_markdown(name, store.data["clips"].get(name, {}), pts, anchor, metrics)
        all_bd += bd_table(pts, anchor, bd_metrics)
        curves = curves_of(pts)
        plotted = [m for m, _, _ in TABLE_METRICS if m in metrics]
        for m in plotted:
            plot_rd({k: _xy(v, m) for k, v in curves.items()}, m, os.path.join(plot_dir, f"{name}_{m}.png"),
                    title=f"{name}: {m}")
        lines += [f"![{name} {m}](plots/{name}_{m}.png)" for m in plotted] + [""]
    if len(clips) > 1 and all_bd:
        lines += [f"## Mean BD-rate over clips (against {anchor}, clips where defined)", "",
                  "| curve | " + " | ".join(f"BD-rate ({BD_NAMES[m][0]}) | clips" for m in bd_metrics) + " |",
                  "|---|" + "---:|---:|" * len(bd_metrics)]
        for label in sorted({r["curve"] for r in all_bd}):
            cells = []
            for m in bd_metrics:
                vals = [r[f"bd_rate_{m}"] for r in all_bd if r["curve"] == label and r[f"bd_rate_{m}"] is not None]
                cells += [_fmt(float(np.mean(vals)) if vals else None, "{:+.1f} %"), str(len(vals))]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    path = os.path.join(out_dir, "results.md")
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


# ----------------------------------------------------------------------------- CLI


def add_gvc_args(p: argparse.ArgumentParser, *, atoms: bool = True) -> None:
    from gvc_jax.codec.sampling.schedule import DEFAULT_CODEBOOK, DEFAULT_G_SCALE, DEFAULT_STEPS, DEFAULT_TAIL

    g = p.add_argument_group("gvc")
    if atoms:
        g.add_argument("--gvc-atoms", type=int, nargs="*", default=[4, 8, 16], metavar="M",
                       help="atoms per latent frame and step, one point each (none: skip gvc)")
        g.add_argument("--K", type=int, nargs="+", default=None,
                       help="codebook size(s); one curve per K (default: 16384)")
    g.add_argument("--gvc-model", default=None, help="preset:NAME, a converted checkpoint dir, or default model")
    g.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    g.add_argument("--tail", type=int, default=DEFAULT_TAIL)
    g.add_argument("--g-scale", type=float, default=DEFAULT_G_SCALE)
    g.add_argument("--shift", type=float, default=None, help="default: 5.0 above 480p, else 3.0")
    g.add_argument("--codebook", default=DEFAULT_CODEBOOK, help="hadamard | rademacher | gaussian")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--gop-frames", type=int, default=None, help="frames per GOP (4k+1; default 33)")
    g.add_argument("--variants", nargs="+", default=["t2v"], choices=("t2v", "flf2v", "i2v"),
                   help="conditioning variants, one curve each (i2v: 2M atoms on the last latent frame, "
                        "default anchor codec and residual step)")
    g.add_argument("--verify-decode", action="store_true", help="also decode every gvc stream and check it")


def add_input_args(p: argparse.ArgumentParser) -> None:
    from gvc_jax.evaluation import ALL_METRICS, BATCH_DEFAULT_METRICS

    p.add_argument("--frames", type=int, default=None, help="frames to code (from --start; default 33)")
    p.add_argument("--start", type=int, default=None, help="first frame (default 0)")
    p.add_argument("--resize", default=None, metavar="WxH", help="resize every frame first, e.g. 256x144")
    p.add_argument("--metrics", default=None, metavar="LIST",
                   help=f"comma-separated metrics: {','.join(m.replace('_', '-') for m in ALL_METRICS)} (default "
                        f"{','.join(m.replace('_', '-') for m in BATCH_DEFAULT_METRICS)}; DISTS needs 32x32 frames, "
                        "tlp / warp 2 frames; names and checks as encode --eval --metrics)")
    p.add_argument("--vmaf", action="store_true", help="also compute VMAF (same as adding vmaf to --metrics)")
    p.add_argument("--out", required=True, help="output directory (results.json, results.md, plots/, streams/)")


def base_gvc_params(args, **over) -> dict:
    params = {"model": args.gvc_model or "default", "K": None, "M": None, "steps": args.steps, "tail": args.tail,
              "g_scale": args.g_scale, "shift": args.shift, "codebook": args.codebook, "seed": args.seed,
              "gop_frames": args.gop_frames}
    params.update(over)
    return params


def _parse_map(items: Optional[Sequence[str]], what: str, parse: Callable) -> dict:
    out = {}
    for item in items or ():
        codec, sep, value = item.partition("=")
        if not sep or codec not in bl.CODECS:
            raise RDError(f"--{what} takes CODEC=VALUE with CODEC in {', '.join(bl.CODECS)}, got {item!r}")
        try:
            out[codec] = parse(value)
        except ValueError:
            raise RDError(f"--{what} {item!r}: cannot parse {value!r}") from None
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("clip", nargs="?", help=f"video path or a sample name ({', '.join(SAMPLE_CLIPS)})")
    p.add_argument("--dataset", choices=DATASETS, help=f"run over a dataset's clips ({DATASETS_MODULE})")
    p.add_argument("--protocol", choices=tuple(PROTOCOLS), default=None,
                   help="gvcc: 33-frame GOPs, 3 GOPs (99 frames), 1280x720 unless --resize (the original paper);\n"
                        "ctc96: the first 96 frames of each sequence, native size unless --resize")
    p.add_argument("--data-dir", help="dataset directory (with --dataset)")
    p.add_argument("--clips", nargs="+", help="with --dataset: only these clip names")
    add_input_args(p)
    add_gvc_args(p)
    b = p.add_argument_group("baselines")
    b.add_argument("--baselines", nargs="*", default=list(bl.CODECS), help=f"any of {' '.join(bl.CODECS)}")
    b.add_argument("--ladder", nargs="+", metavar="CODEC=Q1,Q2", help="override a codec's quality ladder")
    b.add_argument("--preset", nargs="+", metavar="CODEC=PRESET", help="override a codec's encoder preset")
    b.add_argument("--anchor", default="x265", help="curve the BD-rates are measured against")
    p.add_argument("--report-only", action="store_true", help="only rewrite results.md and plots from results.json")
    return p


def point_specs(args) -> List[PointSpec]:
    specs = []
    ks = args.K or [None]
    for variant in getattr(args, "variants", None) or ["t2v"]:
        for k in ks:
            curve = "gvc" if len(ks) == 1 else f"gvc K={k}"
            curve = curve if variant == "t2v" else curve.replace("gvc", f"gvc-{variant}", 1)
            for m in args.gvc_atoms or ():
                if m < 1:
                    raise RDError(f"--gvc-atoms must be >= 1, got {m}")
                specs.append(gvc_spec(base_gvc_params(args, K=k, M=int(m), variant=variant), curve=curve))
    ladders = _parse_map(args.ladder, "ladder", lambda v: tuple(int(x) for x in v.split(",") if x))
    presets = _parse_map(args.preset, "preset", str)
    for codec in args.baselines or ():
        bl.get_codec(codec)
        for q in ladders.get(codec, bl.default_ladder(codec)):
            specs.append(baseline_spec(codec, q, presets.get(codec)))
    return specs


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except (RDError, VideoError, bl.BaselineError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _main(args) -> int:
    metrics = parse_metric_names(args)
    if args.report_only:
        if not os.path.isfile(os.path.join(args.out, "results.json")):
            raise RDError(f"--report-only: no results.json in {args.out}")
        print(write_report(ResultStore(os.path.join(args.out, "results.json")), args.out, args.anchor, metrics))
        return 0
    if bool(args.clip) == bool(args.dataset):
        raise RDError("give either a CLIP or --dataset NAME (not both)")
    apply_protocol(args)
    if args.frames < 1:
        raise RDError(f"--frames must be >= 1, got {args.frames}")
    for codec in args.baselines or ():
        bl.get_codec(codec)
    os.makedirs(args.out, exist_ok=True)
    store = ResultStore(os.path.join(args.out, "results.json"))
    specs = point_specs(args)
    resize = parse_size(args.resize)
    clips = ([load_clip(args.clip, frames=args.frames, start=args.start, resize=resize)] if args.clip else
             load_dataset(args.dataset, args.data_dir, frames=args.frames, start=args.start, resize=resize,
                          only=args.clips))
    gvc = GvcRunner(args.gvc_model, verify_decode=args.verify_decode)
    names = []
    for clip in clips:
        clip.info["protocol"] = args.protocol
        names.append(clip.name)
        run_points(clip, specs, store, args.out, clip_metrics(metrics, clip, args.metrics is not None), gvc)
        write_report(store, args.out, args.anchor, metrics, clips=names)
    if not names:
        raise RDError("no clips to evaluate")
    path = write_report(store, args.out, args.anchor, metrics, clips=names)
    print(f"wrote {path}, {os.path.join(args.out, 'results.json')} and plots in {os.path.join(args.out, 'plots')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
