"""Python API: ``from gvc_jax import encode, decode``.

    import gvc_jax
    from gvc_jax import encode, decode, CodecOptions

    stream = encode("clip.mp4", atoms=16, max_frames=33, resize=(256, 144))   # -> bytes
    frames = decode(stream)                                                    # -> uint8 [F, H, W, 3]
    stream = encode(frames, options=CodecOptions.preset("low-rate"), fps=16)

``model`` is ``None`` (the embedded default model), a converted checkpoint directory,
``"preset:NAME"`` (random weights, for tests) or a loaded ``CodecModel``; models given by name are
loaded once per process. Options are a ``CodecOptions`` (or a preset name), and keyword overrides.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import numpy as np

from gvc_jax import compile_cache, pixels
from gvc_jax.codec import planner
from gvc_jax.codec.format.bitstream import MAX_GOP_FRAMES, read_file
from gvc_jax.codec.gop.journal import input_identity
from gvc_jax.codec.gop.plan import ArrayReader, check_gop_frames
from gvc_jax.codec.gop.rate import RateTarget, atoms_pattern
from gvc_jax.codec.gop.variants import get_variant
from gvc_jax.codec.payloads import anchors, residual
from gvc_jax.codec.sampling import multires, schedule
from gvc_jax.codec.session import SIZE_MULTIPLE, EncodeJob, coded_size, decode_video, encode_streams, stream_header
from gvc_jax.io.video_reader import VideoReader
from gvc_jax.models.registry import resolve_model, with_execution
from gvc_jax.parallel import GopMesh, check_devices, init_distributed
from gvc_jax.pixels import pad_to_multiple

__all__ = ["CodecOptions", "CodingSetup", "PRESETS", "decode", "encode", "encode_full", "get_model",
           "init_distributed"]

DEFAULT_GOP_FRAMES = 33

# The command-line groups the codec options appear in (``cli.add_codec_args``).
SAMPLER_GROUP = "rate and sampler"
VARIANTS_GROUP = "variants (see README: Variants)"
INPUT_GROUP = "input"


def _option(default, *flags_and_group, help: str, **argparse_kw):
    """A ``CodecOptions`` field and its command-line flag, declared together: ``flags`` (e.g.
    ``"-M", "--atoms"``), the help group (last positional), the help text and argparse's ``type`` /
    ``choices`` / ``metavar``. ``cli.add_codec_args`` builds the flags from these."""
    *flags, group = flags_and_group
    return dataclasses.field(default=default, metadata={"flags": tuple(flags), "group": group, "help": help,
                                                        "argparse": argparse_kw})


def option_fields() -> tuple:
    """The ``CodecOptions`` fields, in declaration order (each with its flag metadata)."""
    return dataclasses.fields(CodecOptions)


@dataclass(frozen=True)
class CodecOptions:
    """Encoder settings. Every field has the command line's default; all are validated on creation.

    variant:        conditioning variant: ``t2v`` (no anchor, lowest rate), ``flf2v`` (coded boundary
                    frames shared by neighbouring GOPs), ``i2v`` (coded first frame, then a chain on
                    the decoded last frame, with a tail latent residual)
    atoms:          M, atoms per latent frame and stochastic step: the rate knob
    tail_atoms:     M_tail, atoms on the last ``tail_frames`` latent frames (None: ``atoms``)
    tail_frames:    how many final latent frames use ``tail_atoms``
    anchor_codec:   still-image codec of the anchor frames (i2v, flf2v; None: the default)
    anchor_quality: its quality, 0-100 (None: the default)
    residual_step:  i2v tail-residual quantiser step in latent units (None: the default; 0: no residual)
    target_bpp:     choose M (and M_tail in proportion) so the stream lands just under this rate,
                    from the exact rate formula and the measured anchor sizes (None: use ``atoms``)
    max_dit_calls:  with ``target_bpp``: the rate-compute planner (``codec.planner``, our own design)
                    chooses ``steps``, ``x0_cache``, the stage plan (see ``mr``) and M for the least
                    predicted distortion within this many full-size DiT calls per GOP (a call at a
                    lower stage counts its share of the tokens; None: no planner)
    speed:          with ``target_bpp``, instead of ``max_dit_calls``: ``quality`` / ``balanced`` /
                    ``fast``, a budget of 1.0 / 0.6 / 0.4 times ``steps`` full-size DiT calls per GOP
    calibration:    the planner's calibration table (None: ``calibration.json`` in the model directory)
    codebook_size:  K, atoms in each (step, frame) codebook
    codebook:       atom kind: ``hadamard`` (fast, integer-exact), ``gaussian`` (the published method), ``rademacher``
    steps, tail:    sampling steps T and deterministic final steps (``steps - tail`` steps carry bits)
    g_scale:        SDE diffusion scale (g = g_scale * t^2)
    shift:          time-grid shift (None: 5.0 above 480p, else 3.0)
    seed:           codebook and initial-noise seed
    x0_cache:       steps whose DiT call is skipped, the velocity rebuilt from the previous clean
                    estimate: ``off``, ``alternate`` (every odd step; with ``mr``: TURBO's refresh
                    rule, never in the tail or at a switch), ``turbo`` (that rule plus one refresh
                    right after each switch) or step indices "3,5,9" / a tuple; carried in the
                    header, so the decoder skips the same steps
    mr:             multi-resolution stages: ``off``, ``auto`` (from the model's native size) or
                    ``WxH@STEP[,WxH@STEP...]``, the lower stages' pixel sizes, smallest first, each
                    with the stochastic step at which it ends; the coded size is the last stage.
                    None (the default): ``off``, except that the planner then chooses between
                    ``off`` and ``auto``; with the planner ``off`` / ``auto`` fix that choice
    gop_frames:     frames per GOP, 4k+1 (None: 33, or the smallest 4k+1 that holds a shorter clip)
    """
    variant: str = _option("t2v", "--variant", VARIANTS_GROUP,
                           help="t2v: no anchors, lowest rate; flf2v: coded boundary frames shared by "
                                "neighbouring GOPs; i2v: coded first frame, a chain on decoded last frames, tail "
                                "residual")
    atoms: int = _option(schedule.DEFAULT_M, "-M", "--atoms", SAMPLER_GROUP, type=int,
                         help="atoms per latent frame and stochastic step (the rate knob)")
    tail_atoms: Optional[int] = _option(None, "--tail-atoms", VARIANTS_GROUP, type=int, metavar="M_TAIL",
                                        help="atoms on the last --tail-frames latent frames (adaptive atoms; "
                                             "default: -M)")
    tail_frames: int = _option(1, "--tail-frames", VARIANTS_GROUP, type=int,
                               help="latent frames that use --tail-atoms")
    anchor_codec: Optional[str] = _option(None, "--anchor-codec", VARIANTS_GROUP,
                                          help="still codec of anchor frames: x265, vvenc, svtav1, webp, avif "
                                               "(default x265)")
    anchor_quality: Optional[int] = _option(None, "--anchor-quality", VARIANTS_GROUP, type=int,
                                            help="anchor quality 0-100 (higher: better, more bytes; default 30)")
    residual_step: Optional[float] = _option(None, "--residual-step", VARIANTS_GROUP, type=float,
                                             help="i2v tail-residual quantiser step, latent units (larger: fewer "
                                                  "bytes; 0: no residual; default 0.25)")
    target_bpp: Optional[float] = _option(None, "--target-bpp", SAMPLER_GROUP, type=float, metavar="BPP",
                                          help="choose M (and M_tail in proportion) to land just under this rate, "
                                               "anchors included (i2v: the tail residual comes on top; the report "
                                               "says how close it got)")
    max_dit_calls: Optional[int] = _option(None, "--max-dit-calls", SAMPLER_GROUP, type=int, metavar="N",
                                           help="with --target-bpp: plan --steps, --x0-cache, --mr and -M for the "
                                                "least predicted distortion within N full-size DiT calls per GOP (a "
                                                "call at a lower --mr stage counts its share of the tokens; README: "
                                                "Rate-compute planner; our own design, from the model's calibration "
                                                "table)")
    speed: Optional[str] = _option(None, "--speed", SAMPLER_GROUP, choices=tuple(planner.SPEEDS),
                                   help="with --target-bpp, instead of --max-dit-calls: a budget of 1.0 / 0.6 / 0.4 "
                                        "times --steps full-size DiT calls (quality / balanced / fast)")
    calibration: Optional[str] = _option(None, "--calibration", SAMPLER_GROUP, metavar="FILE",
                                         help="the planner's calibration table (default: MODEL/calibration.json, "
                                              "written by experiments/calibrate.py)")
    codebook_size: int = _option(schedule.DEFAULT_K, "-K", "--codebook-size", SAMPLER_GROUP, type=int,
                                 help="codebook size")
    codebook: str = _option(schedule.DEFAULT_CODEBOOK, "--codebook", SAMPLER_GROUP, choices=schedule.CODEBOOK_KINDS,
                            help="atom kind")
    steps: int = _option(schedule.DEFAULT_STEPS, "--steps", SAMPLER_GROUP, type=int, help="sampling steps T")
    tail: int = _option(schedule.DEFAULT_TAIL, "--tail", SAMPLER_GROUP, type=int, help="deterministic final steps")
    g_scale: float = _option(schedule.DEFAULT_G_SCALE, "--g-scale", SAMPLER_GROUP, type=float,
                             help="SDE diffusion scale")
    shift: Optional[float] = _option(None, "--shift", SAMPLER_GROUP, type=float,
                                     help="time-grid shift (default: 5.0 above 480p, else 3.0)")
    seed: int = _option(0, "--seed", SAMPLER_GROUP, type=int, help="codebook / initial-noise seed")
    x0_cache: Union[str, Tuple[int, ...]] = _option(
        "off", "--x0-cache", SAMPLER_GROUP, metavar="SPEC",
        help="skip the DiT on some steps, rebuilding the velocity from the previous clean estimate: off, alternate "
             "(every odd step, ~2x fewer DiT calls; with --mr never in the tail or at a switch), turbo (as alternate "
             "with --mr, plus one refresh after each switch) or step indices '3,5,9'; never two in a row; stored in "
             "the header")
    mr: Optional[str] = _option(None, "--mr", SAMPLER_GROUP, metavar="PLAN",
                                help="multi-resolution trajectory: off (default), auto (stages from the model's native "
                                     "size) or WxH@STEP[,WxH@STEP...]: the lower stages' sizes, smallest first, each "
                                     "with the stochastic step it ends at (e.g. 832x480@8 for 720p); the coded size is "
                                     "the last stage; stored in the header. With --max-dit-calls / --speed, leaving "
                                     "--mr out lets the planner choose off or auto; off / auto fix the choice")
    gop_frames: Optional[int] = _option(None, "--gop-frames", INPUT_GROUP, type=int,
                                        help="frames per GOP, 4k+1 (default 33, or fewer for a shorter clip)")

    def __post_init__(self):
        get_variant(self.variant)
        if self.anchor_codec is not None or self.anchor_quality is not None:
            anchors.check_anchor_codec(self.anchor_codec or anchors.DEFAULT_ANCHOR_CODEC,
                                       anchors.DEFAULT_ANCHOR_QUALITY if self.anchor_quality is None
                                       else self.anchor_quality)
        if self.residual_step is not None and self.residual_step != 0:
            residual.check_step(self.residual_step)
        if self.target_bpp is not None and not (isinstance(self.target_bpp, (int, float))
                                                and math.isfinite(self.target_bpp) and 0 < self.target_bpp <= 24):
            raise ValueError(f"target_bpp must be in (0, 24], got {self.target_bpp!r}")
        if self.mr is not None and not isinstance(self.mr, str):
            raise ValueError(f"mr (--mr) must be a string, got {self.mr!r}")
        self._check_planner()
        if not isinstance(self.tail_frames, int) or self.tail_frames < 0:
            raise ValueError(f"tail_frames must be a non-negative integer, got {self.tail_frames!r}")
        if self.gop_frames is not None:
            if not isinstance(self.gop_frames, int) or not 1 <= self.gop_frames <= MAX_GOP_FRAMES:
                raise ValueError(f"gop_frames must be 4k+1 in [1, {MAX_GOP_FRAMES}], got {self.gop_frames}")
            check_gop_frames(self.gop_frames)
        self.sampler(480, 832, stages=None)  # validates every sampler field
        # the plan's syntax and step range (its sizes are checked against the video and the model in ``sampler``)
        multires.parse_stage_plan(self.mr or "off", coded=(multires.MAX_SIZE, multires.MAX_SIZE), steps=self.steps,
                                  tail=self.tail, spatial_stride=1, patch=1)

    def _check_planner(self) -> None:
        if self.max_dit_calls is not None and (not isinstance(self.max_dit_calls, int) or isinstance(
                self.max_dit_calls, bool) or not 1 <= self.max_dit_calls <= schedule.MAX_STEPS):
            raise ValueError(f"max_dit_calls (--max-dit-calls) must be an integer in [1, {schedule.MAX_STEPS}], "
                             f"got {self.max_dit_calls!r}")
        if self.speed is not None and self.speed not in planner.SPEEDS:
            raise ValueError(f"speed (--speed) must be one of {', '.join(planner.SPEEDS)}, got {self.speed!r}")
        if self.max_dit_calls is not None and self.speed is not None:
            raise ValueError("give max_dit_calls (--max-dit-calls) or speed (--speed), not both")
        if (self.max_dit_calls is not None or self.speed is not None) and self.target_bpp is None:
            raise ValueError("max_dit_calls / speed (--max-dit-calls / --speed) need target_bpp (--target-bpp): "
                             "the planner chooses the schedule for a rate")
        if (self.max_dit_calls is not None or self.speed is not None) and self.mr is not None and \
                self.mr.strip().lower() not in multires.MR_OFF + ("auto",):
            raise ValueError("the rate-compute planner (--max-dit-calls / --speed) chooses between --mr off and "
                             "auto: give one of those, leave --mr out (either), or give --target-bpp alone with a "
                             "stage plan")
        if self.calibration is not None and (self.max_dit_calls is None and self.speed is None
                                             or not isinstance(self.calibration, (str, os.PathLike))):
            raise ValueError("calibration (--calibration) is a table path, used with --max-dit-calls or --speed")

    @property
    def plans(self) -> bool:
        """Whether the rate-compute planner chooses the schedule (``codec.planner``)."""
        return self.max_dit_calls is not None or self.speed is not None

    def planner_mr_axis(self) -> Tuple[str, ...]:
        """The MR axis values the planner may choose (``mr`` None: both)."""
        if self.mr is None:
            return planner.MR_AXIS
        return ("auto",) if self.mr.strip().lower() == "auto" else ("off",)

    def variant_object(self):
        """The ``codec.gop.variants.Variant`` with this run's encoder settings."""
        step = self.residual_step
        if self.variant == "i2v":
            step = residual.DEFAULT_STEP if step is None else (step or None)
        else:
            step = None
        return get_variant(self.variant, anchor_codec=self.anchor_codec, anchor_quality=self.anchor_quality,
                           residual_step=step)

    def replace(self, **overrides) -> "CodecOptions":
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown codec option(s) {sorted(unknown)}; known: "
                            f"{', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_args(cls, args, preset: str = "default") -> "CodecOptions":
        """The options a command line asked for: ``preset``, overridden by every codec flag given
        (``args``: an argparse namespace from ``cli.add_codec_args``; flags left out are None)."""
        given = {f.name: getattr(args, f.name) for f in option_fields()
                 if getattr(args, f.name, None) is not None}
        return cls.preset(preset, **given)

    @classmethod
    def preset(cls, name: str, **overrides) -> "CodecOptions":
        if name not in PRESETS:
            raise ValueError(f"unknown options preset {name!r}; known: {', '.join(PRESETS)}")
        return PRESETS[name].replace(**overrides)

    def gop_frames_for(self, num_frames: int, temporal_stride: int = 4) -> int:
        if self.gop_frames is not None:
            return self.gop_frames
        fit = temporal_stride * -(-(max(num_frames, 1) - 1) // temporal_stride) + 1
        return min(DEFAULT_GOP_FRAMES, fit)

    def stage_plan(self, height: int, width: int, model=None, *, mr: Optional[str] = None,
                   steps: Optional[int] = None) -> Optional[multires.StagePlan]:
        """``mr`` for a clip of this (unpadded) size: the checked plan, or None (one size). ``model``
        gives the grid (VAE stride, DiT patch) and the native size of ``auto`` (default: Wan2.1's).
        ``mr`` / ``steps``: another plan spec / step count than the options' (the planner's candidates)."""
        coded = (coded_size(width), coded_size(height))
        grid: dict = {}
        if model is not None:
            grid = dict(spatial_stride=model.config.vae.spatial_stride, patch=model.config.dit.patch_size,
                        native=model.config.native_size or multires.WAN_NATIVE_SIZE)
        return multires.parse_stage_plan(mr or self.mr or "off", coded=coded, steps=steps or self.steps,
                                         tail=self.tail, **grid)

    def x0_cache_steps(self, stages: Optional[multires.StagePlan]) -> Tuple[int, ...]:
        """The x0-cache skip schedule: ``x0_cache`` for these stages (see the field's doc)."""
        mode = self.x0_cache.strip() if isinstance(self.x0_cache, str) else None
        if mode == "turbo" or (mode == "alternate" and stages is not None):
            switches = () if stages is None else stages.switches
            return multires.mr_refresh_schedule(self.steps, self.tail, 2, switches,
                                                warmup=mode == "turbo").as_x0_cache()
        return schedule.x0_cache_schedule(self.x0_cache, self.steps)

    def sampler(self, height: int, width: int, gop_frames: Optional[int] = None,
                temporal_stride: int = 4, model=None, stages: Any = "plan") -> schedule.SamplerConfig:
        """The ``SamplerConfig`` for a clip of this (unpadded) size (``model``: see ``stage_plan``;
        ``stages``: a plan instead of ``mr``'s)."""
        if stages == "plan":
            stages = self.stage_plan(height, width, model)
        shift = self.shift if self.shift is not None else schedule.default_shift(height, width)
        gop_frames = gop_frames or self.gop_frames or DEFAULT_GOP_FRAMES
        n = schedule.latent_frames(gop_frames, temporal_stride)
        tail = min(self.tail_frames, n) if self.tail_atoms is not None else 0
        atoms = (self.atoms,) * (n - tail) + (self.atoms if self.tail_atoms is None else self.tail_atoms,) * tail
        return schedule.SamplerConfig.for_gop(
            gop_frames, atoms, temporal_stride=temporal_stride,
            steps=self.steps, tail=self.tail, g_scale=self.g_scale, shift=shift, K=self.codebook_size,
            codebook=self.codebook, seed=self.seed, x0_cache=self.x0_cache_steps(stages), stages=stages)


    def resolve(self, model, readers: Sequence, reopen: Optional[Callable[[int], Any]] = None) -> "CodingSetup":
        """The one place options meet an input and a model: -> the variant, the GOP length, the
        sampler and each video's rate target. ``readers``: the videos of one run (one coded size;
        the GOP length fits the longest); ``reopen(i)``: a fresh reader of video ``i`` (a context
        manager), needed with ``target_bpp`` (its anchors are coded once ahead to measure them)."""
        stride = model.config.vae.temporal_stride
        gop = self.gop_frames_for(max(r.num_frames for r in readers), stride)
        sampler = self.sampler(readers[0].height, readers[0].width, gop, stride, model)
        variant = self.variant_object()
        table = self._calibration(model) if self.plans else None  # a bad table: refused before any work
        targets: list = [None] * len(readers)
        if self.target_bpp is not None:
            if reopen is None:
                raise ValueError("target_bpp needs to read the video twice (give resolve a reopen function)")
            for i in range(len(readers)):
                with reopen(i) as again:
                    targets[i] = self._rate_target(variant, model, again, gop, len(sampler.atoms_per_frame))
        chosen = None
        if table is not None:
            videos = [planner.Video(stream_header(r, model, sampler, variant, variant.plan(r.num_frames, gop, stride)),
                                    t, r.num_frames * r.width * r.height)
                      for r, t in zip(readers, targets, strict=True)]
            budget = planner.compute_budget(self.max_dit_calls, self.speed, self.steps)
            height, width = readers[0].height, readers[0].width
            chosen = planner.plan(table, videos, sampler.tail, budget, self.planner_mr_axis(),
                                  lambda steps: self.stage_plan(height, width, model, mr="auto", steps=steps))
            sampler = sampler.replace(steps=chosen.schedule.steps, x0_cache=chosen.schedule.x0_cache,
                                      stages=chosen.schedule.stages, atoms_per_frame=chosen.atoms_per_frame)
        return CodingSetup(self, variant, gop, sampler, tuple(targets), chosen)

    def _calibration(self, model) -> "planner.CalibrationTable":
        """The planner's validated table for ``model`` (``calibration``, else the model directory's)."""
        path = os.fspath(self.calibration) if self.calibration is not None else planner.table_path(model)
        if path is None:
            raise planner.CalibrationError(f"the planner needs a calibration table: model {model.name} has no "
                                           f"directory; give --calibration FILE (experiments/calibrate.py)")
        return planner.read_table(path, model.fingerprint)

    def _rate_target(self, variant, model, reader, gop_frames: int, latent_frames: int) -> RateTarget:
        """The byte budget of ``target_bpp`` for ``reader``'s video, the lengths of its anchor payloads
        (coded now, from one read: the encoder codes the same bytes again) and the M / M_tail pattern."""
        assert self.target_bpp is not None
        plan = variant.plan(reader.num_frames, gop_frames, model.config.vae.temporal_stride)
        needed = {f for span in plan.spans for f in variant.coded_anchors(span)}
        images: dict = {}
        done = 0
        while needed - set(images) and done < reader.num_frames:
            chunk = reader.read(min(64, reader.num_frames - done))
            for i, frame in enumerate(chunk):
                if done + i in needed:
                    images[done + i] = pad_to_multiple(frame[None], SIZE_MULTIPLE)[0]
            done += len(chunk)
        lengths: list = []
        for span in plan.spans:
            if not images:  # a variant without anchors: no side payloads
                lengths.append(())
                continue
            frames = np.zeros((span.length, *next(iter(images.values())).shape), np.uint8)
            for f in variant.coded_anchors(span):
                frames[f - span.start] = images[f]
            lengths.append(tuple(len(d) for _, d in variant.make_anchors(span, frames)))
        ratio = 1.0 if self.tail_atoms is None else self.tail_atoms / self.atoms
        tail = self.tail_frames if self.tail_atoms is not None else 0
        budget = int(self.target_bpp * reader.num_frames * reader.width * reader.height / 8)
        return RateTarget(budget, tuple(lengths), atoms_pattern(latent_frames, tail, ratio))


@dataclass(frozen=True)
class CodingSetup:
    """What ``CodecOptions.resolve`` made of the options for an input and a model."""
    options: CodecOptions
    variant: Any                 # codec.gop.variants.Variant, with the encoder's settings
    gop_frames: int
    sampler: schedule.SamplerConfig
    targets: tuple               # per video: a rate.RateTarget, or None
    plan: Optional[planner.Plan] = None  # the rate-compute planner's choice (``max_dit_calls`` / ``speed``)

    def encode(self, jobs: Sequence[EncodeJob], model, *, progress=None, devices=None, prompt: str = "") -> list:
        """``session.encode_streams`` of ``jobs`` with these settings -> one ``CodecResult`` each (with
        the planner's ``plan``, if it chose the schedule)."""
        results = encode_streams(jobs, model, self.sampler, variant=self.variant, gop_frames=self.gop_frames,
                                 progress=progress, devices=devices, prompt=prompt)
        for result in results:
            result.plan = self.plan
        return results


PRESETS = {
    "default": CodecOptions(),
    "low-rate": CodecOptions(atoms=16),       # about a quarter of the default's bits
    "high-rate": CodecOptions(atoms=128),
    "fast": CodecOptions(steps=10, tail=2),   # half the DiT calls
    "x0-cache": CodecOptions(x0_cache="alternate"),  # the DiT on every other step (see docs/benchmarks.md)
    # multi-resolution stages from the model's native size, TURBO's refresh rule with a warmup call
    "turbo": CodecOptions(mr="auto", x0_cache="turbo"),
    "published": CodecOptions(codebook="gaussian"),  # the published method's Gaussian atoms (slow search)
    "i2v": CodecOptions(variant="i2v", tail_atoms=2 * schedule.DEFAULT_M),  # adaptive atoms on the tail frame
    "flf2v": CodecOptions(variant="flf2v"),
}


def _options(options: Union[None, str, CodecOptions], overrides: dict) -> CodecOptions:
    if options is None:
        options = CodecOptions()
    elif isinstance(options, str):
        options = CodecOptions.preset(options)
    elif not isinstance(options, CodecOptions):
        raise TypeError(f"options must be a CodecOptions or a preset name, got {type(options).__name__}")
    return options.replace(**overrides) if overrides else options


@functools.lru_cache(maxsize=4)
def _load_named(spec: Optional[str], dit_sharding=None):
    return resolve_model(spec, quiet=True, dit_sharding=dit_sharding)


def get_model(model=None, *, dtype: Optional[str] = None, attention: Optional[str] = None,
              vae_convs: Optional[str] = None, mesh=None):
    """``None`` / a directory / ``"preset:NAME"`` (loaded once per process) or a ``CodecModel``;
    ``dtype`` / ``attention`` set how its DiT runs, ``vae_convs`` (``exact`` / ``fast``) how its VAE
    runs (``registry.with_execution``; None: as stored).
    ``mesh`` (a ``parallel.GopMesh`` with weight shards): a model directory's DiT is read straight
    onto its shards (with several processes, each reads the parts on its own devices). Turns on
    the persistent compilation cache first (``compile_cache.ensure``)."""
    compile_cache.ensure()
    if model is None or isinstance(model, (str, os.PathLike)):
        sharding = mesh.weight_sharding if mesh is not None and mesh.weight_shards > 1 else None
        model = _load_named(None if model is None else os.fspath(model), sharding)
    if dtype is None and attention is None and vae_convs is None:
        return model
    return with_execution(model, dtype=dtype, attention=attention, vae_convs=vae_convs)


def encode(video_or_path, model=None, options: Union[None, str, CodecOptions] = None, *, fps: Optional[float] = None,
           start: int = 0, max_frames: Optional[int] = None, resize=None, progress=None, devices=None,
           weight_shards: int = 1, resume: Optional[str] = None, prompt: str = "", **overrides) -> bytes:
    """Encode a video (a path, or uint8 frames [F, H, W, 3]) -> ``.gvc`` stream bytes.

    ``options`` / keyword overrides: see ``CodecOptions``. ``start``, ``max_frames``, ``resize``
    (W, H) select the input. ``fps`` is stored for arrays (default 16; files keep theirs).
    ``devices``: code GOPs side by side on that many local devices (default: all; same bytes), or
    a ``parallel.GopMesh``; ``weight_shards``: split the DiT's weights over that many of them.
    ``resume``: the path the stream will be written to; a journal ``RESUME.resume`` keeps every
    finished GOP, and a rerun with the same arguments codes only the others (remove the journal
    with ``result.journal.remove()`` from ``encode_full`` once the stream is written).
    ``prompt``: a text prompt (stored in the stream; needs a model with a text encoder).
    Several hosts: call ``init_distributed`` first in every process (same arguments everywhere).
    """
    return encode_full(video_or_path, model, options, fps=fps, start=start, max_frames=max_frames, resize=resize,
                       progress=progress, devices=devices, weight_shards=weight_shards, resume=resume,
                       prompt=prompt, **overrides).stream


def encode_full(video_or_path, model=None, options=None, *, fps=None, start=0, max_frames=None, resize=None,
                progress=None, sink=None, devices=None, weight_shards: int = 1, resume: Optional[str] = None,
                prompt: str = "", **overrides):
    """As ``encode``, returning the full ``CodecResult`` (stream, header, per-GOP reports, the open
    resume journal); ``sink(frames)`` receives the reconstruction GOP by GOP."""
    opts = _options(options, overrides)
    mesh = devices if isinstance(devices, GopMesh) else GopMesh(devices, weight_shards)
    model = get_model(model, mesh=mesh)
    select = dict(fps=fps, start=start, max_frames=max_frames, resize=resize)
    with _open_input(video_or_path, **select) as reader:
        setup = opts.resolve(model, [reader], lambda _: _open_input(video_or_path, **select))
        identity = (_identity(video_or_path), start, max_frames, resize) if resume is not None else ()
        job = EncodeJob(reader, sink, target=setup.targets[0], resume=resume, resume_identity=identity)
        return setup.encode([job], model, progress=progress, devices=mesh, prompt=prompt)[0]


def _identity(video_or_path) -> tuple:
    """What a resume journal is bound to: a file's identity, or an array's bytes digest."""
    if isinstance(video_or_path, (str, os.PathLike)):
        return (input_identity(os.fspath(video_or_path)),)
    return (hashlib.sha256(np.ascontiguousarray(video_or_path).tobytes()).hexdigest(),)


def decode(stream_or_path, model=None, *, strict: bool = False, check_fingerprint: bool = True,
           progress=None, devices: Optional[int] = None, conceal: bool = False,
           allow_drift: bool = False) -> np.ndarray:
    """A ``.gvc`` stream (bytes or a path) -> uint8 frames [F, H, W, 3] at the original size.
    ``devices``: as for ``encode`` (a stream decodes on any number of devices). ``conceal`` and
    ``allow_drift``: see ``codec.session.decode_stream`` (damaged records, version-1 drift)."""
    check_devices(devices)
    if isinstance(stream_or_path, (str, os.PathLike)):
        stream_or_path = read_file(stream_or_path)
    result = decode_video(stream_or_path, get_model(model), strict=strict, check_fingerprint=check_fingerprint,
                          progress=progress, devices=devices, conceal=conceal, allow_drift=allow_drift)
    assert result.video is not None  # decode_video collects the frames
    return result.video


def _open_input(video_or_path, *, fps, start, max_frames, resize):
    if isinstance(video_or_path, (str, os.PathLike)):
        return VideoReader(video_or_path, start=start, max_frames=max_frames, resize=resize)
    video = pixels.as_video(video_or_path, "video")
    stop = None if max_frames is None else start + max_frames
    video = video[start:stop]
    if len(video) == 0:
        raise ValueError("the video has no frames in the selected range")
    if resize is not None:
        video = pixels.resize_frames(video, resize)
    return ArrayReader(video, 16.0 if fps is None else float(fps))
