"""Local video test sets (UVG, MCL-JCV, HEVC class B) as tensorflow-datasets builders, plus the harness loader.

Development-only: used by ``experiments/rd.py`` and the tests, never by the codec, so it lives
with the experiments (not installed with ``gvc_jax``; tensorflow-datasets is in
requirements-dev.txt). Import it from the repository root (``experiments`` is a package there).

:func:`load_clips` builds (once) the tfds dataset from a local directory of the official files
into ``data_dir`` (``array_record``, no TensorFlow needed) and yields ``(name, frames, fps)``.
Building is never a download: the files must already be on disk.

Example::

    from experiments.datasets import load_clips, UVG_CLASSIC
    for name, frames, fps in load_clips("uvg", "/data/tfds", manual_dir="/data/uvg",
                                        max_frames=33, resize=(256, 144), clips=list(UVG_CLASSIC)):
        ...  # frames: uint8 [33, 144, 256, 3]

The tfds machinery is imported lazily (importing this package is cheap).
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

DATASETS = ("uvg", "mcljcv", "hevcb")
UVG_CLASSIC = ("Beauty", "Bosphorus", "HoneyBee", "Jockey", "ReadySteadyGo", "ShakeNDry", "YachtRide")

__all__ = ["DATASETS", "UVG_CLASSIC", "builder_class", "load_clips", "prepare"]


def builder_class(name: str):
    """The builder class of dataset ``name`` (``"uvg"``, ``"mcljcv"`` or ``"hevcb"``)."""
    if name == "uvg":
        from experiments.datasets.uvg import Uvg

        return Uvg
    if name == "mcljcv":
        from experiments.datasets.mcljcv import MclJcv

        return MclJcv
    if name == "hevcb":
        from experiments.datasets.hevcb import HevcB

        return HevcB
    from experiments.datasets.common import DatasetError

    raise DatasetError(f"unknown dataset {name!r}; choose one of {DATASETS}")


def _prepared_configs(cls, data_dir: str) -> list[str]:
    """Config names of ``cls`` already prepared under ``data_dir`` (current version only)."""
    root = os.path.join(data_dir, cls.name)
    if not os.path.isdir(root):
        return []
    version = str(cls.VERSION)
    return sorted(
        c for c in os.listdir(root) if os.path.isfile(os.path.join(root, c, version, "dataset_info.json"))
    )


def _pick_config(cls, data_dir: str, resize, max_frames):
    """A prepared config covering (resize, max_frames) if any, else the exact config to build."""
    from experiments.datasets import common

    best = None
    for cname in _prepared_configs(cls, data_dir):
        parsed = common.parse_config_name(cname)
        if parsed is None or parsed[0] != resize:
            continue
        cap = parsed[1]
        if cap is None or (max_frames is not None and cap >= max_frames):
            if best is None or (cap or float("inf")) < (best[1] or float("inf")):
                best = (cname, cap)
    name = common.config_name(resize, max_frames) if best is None else best[0]
    for cfg in cls.BUILDER_CONFIGS:
        if cfg.name == name:
            return cfg
    parsed = common.parse_config_name(name)
    assert parsed is not None  # a canonical name: config_name's, or a prepared one that parsed
    res, cap = parsed
    return common.make_config(res, cap)


def prepare(
    name: str,
    data_dir: str,
    *,
    manual_dir: str | None = None,
    max_frames: int | None = None,
    resize: tuple[int, int] | None = None,
):
    """Return a prepared tfds builder of ``name`` covering ``max_frames`` frames at ``resize``.

    Reuses an already-built config under ``data_dir`` with the same resolution and at least
    ``max_frames`` frames (e.g. ``256x144_33f`` serves ``max_frames=17``); otherwise builds the
    config :func:`experiments.datasets.common.config_name` ``(resize, max_frames)`` from
    ``manual_dir`` (default: ``data_dir/manual`` if it exists, else ``data_dir`` itself).
    To rebuild after changing the files, delete ``data_dir/<name>/<config>``.

    Raises:
        DatasetError: unknown dataset, bad arguments, missing manual dir, no matching files,
            malformed YUV files.
    """
    import tensorflow_datasets as tfds

    from experiments.datasets import common

    cls = builder_class(name)
    resize = common.check_resize(resize)
    max_frames = common.check_max_frames(max_frames)
    data_dir = os.path.abspath(os.fspath(data_dir))
    builder = cls(data_dir=data_dir, config=_pick_config(cls, data_dir, resize, max_frames))
    if not builder.is_prepared():
        if manual_dir is None:
            manual = os.path.join(data_dir, "manual")
            manual_dir = manual if os.path.isdir(manual) else data_dir
        manual_dir = os.path.abspath(os.fspath(manual_dir))
        if not os.path.isdir(manual_dir):
            raise common.DatasetError(
                f"{name}: manual directory {manual_dir} does not exist (put the official files there)"
            )
        common.discover_clips(manual_dir, cls.parse_filename, name, cls.EXPECTED_FILES)  # fail fast
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def load_clips(
    name: str,
    data_dir: str,
    *,
    manual_dir: str | None = None,
    max_frames: int | None = None,
    resize: tuple[int, int] | None = None,
    clips: list[str] | None = None,
) -> Iterator[tuple[str, np.ndarray, float]]:
    """Yield ``(clip_name, frames uint8 [F, H, W, 3], fps)`` of test set ``name`` in ``DATASETS``.

    Builds the tfds dataset first if needed (see :func:`prepare`; this happens eagerly, so argument
    and file errors raise at call time). ``resize`` is ``(W, H)``, applied at build time;
    ``max_frames`` caps frames per clip (F <= max_frames); ``clips`` selects and orders clips by
    name (unknown names raise ``DatasetError``). Default order: clip names, natural sort.
    """
    from experiments.datasets import common

    builder = prepare(name, data_dir, manual_dir=manual_dir, max_frames=max_frames, resize=resize)
    common.clip_index(builder)  # fail fast on a broken build
    if clips is not None:
        known = {e["name"] for e in common.clip_index(builder)}
        unknown = [c for c in ([clips] if isinstance(clips, str) else clips) if c not in known]
        if unknown:
            raise common.DatasetError(f"{name}: unknown clip(s) {unknown}; available: {sorted(known)}")
    return common.iter_clips(builder, clips=clips, max_frames=max_frames)
