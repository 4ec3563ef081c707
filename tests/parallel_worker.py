"""Run by tests/test_parallel.py in a fresh process with N host devices (XLA_FLAGS): codes clips
with T2V and FLF2V on 1, 2 and all devices, decodes across device counts, prints one JSON line.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/parallel_worker.py
"""
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # experiments/

import jax
import numpy as np

import gvc_jax  # noqa: F401  (XLA flags before jax)
from gvc_jax import parallel
from gvc_jax.codec.gop.variants import FLF2V
from gvc_jax.codec.sampling.schedule import SamplerConfig
from gvc_jax.codec.session import decode_video, encode_video
from gvc_jax.io.sample_clips import sample_clip_path
from gvc_jax.io.video_reader import read_video
from gvc_jax.models.registry import init_preset

SAMPLER = SamplerConfig(steps=4, tail=1, g_scale=3.0, shift=3.0, K=256, atoms_per_frame=(3, 3, 6), seed=5)
GOP = 9


def digest(b) -> str:
    return hashlib.sha256(bytes(b)).hexdigest()[:16]


def weight_sharding(model, video, ref) -> dict:
    """The DiT's weights split over 4 devices: the velocity, bytes per device, and a whole encode
    (``ref``: the same encode on 1 device with whole weights)."""
    from flax import nnx

    from gvc_jax.codec.gop.engine import GopEngine
    from gvc_jax.parallel import GopMesh

    n = jax.local_device_count()
    split = GopMesh(n, weight_shards=n)
    _, params = nnx.split(model.dit)
    sharded = split.shard_weights(params)
    leaves = [a for a in jax.tree.leaves(sharded) if hasattr(a, "addressable_shards")]
    total = sum(a.nbytes for a in leaves)
    per_device = max(sum(s.data.nbytes for a in leaves for s in a.addressable_shards if s.device == d)
                     for d in split.devices)
    plain = GopEngine(model, SAMPLER, 48, 64, GOP)
    frames = np.zeros((GOP, 48, 64, 3), np.uint8)
    frames[:, :40, :56] = video[:GOP]
    x = plain.target_latent(frames)
    t, feats = plain.trajectory.tables["t"][3], plain.trajectory.tables["t_feat"][3]
    cond = plain.unconditioned()
    velocity = plain.trajectory._velocity
    u_plain = jax.jit(velocity)(params, x, t, feats, cond)
    u_split = jax.jit(velocity)(sharded, *split._on_mesh((x, t, feats, cond)))
    # a whole encode with 2 GOPs x 2 weight shards, decoded on 1 device
    mesh = GopMesh(n, weight_shards=2)
    enc = encode_video(video, 25.0, model, SAMPLER, gop_frames=GOP, devices=mesh)
    dec = decode_video(enc.stream, model, devices=1)
    same = decode_video(enc.stream, model, devices=GopMesh(n, weight_shards=2))
    # read straight onto the shards from a model directory: each device gets only its part
    import tempfile

    from gvc_jax.models.registry import load_checkpoint
    from weights_convert.model_writer import save_model

    with tempfile.TemporaryDirectory() as d:
        save_model(d + "/m", model.config, params, nnx.state(model.vae, nnx.Param))
        loaded = load_checkpoint(d + "/m", dit_sharding=split.weight_sharding)
    on_shards = [a for a in jax.tree.leaves(nnx.state(loaded.dit, nnx.Param)) if hasattr(a, "addressable_shards")]
    loaded_per_device = max(sum(s.data.nbytes for a in on_shards for s in a.addressable_shards if s.device == dv)
                            for dv in split.devices)
    loaded_same = all(np.array_equal(np.asarray(a), np.asarray(b))
                      for a, b in zip(on_shards, jax.tree.leaves(params)))
    return {"loaded_on_shards_per_device": int(loaded_per_device), "loaded_on_shards_equal": bool(loaded_same),
            "loaded_fingerprint_equal": loaded.fingerprint == model.fingerprint,
            "velocity_max_abs_diff": float(np.max(np.abs(np.asarray(u_plain) - np.asarray(u_split)))),
            "velocity_max_abs": float(np.max(np.abs(np.asarray(u_plain)))),
            "param_bytes_total": int(total), "param_bytes_per_device": int(per_device),
            "split_leaves": sum(1 for a in leaves if not a.sharding.is_fully_replicated), "leaves": len(leaves),
            "encode_same_bytes_as_1_device": enc.stream == ref.stream,
            "decode_on_1_device_drift": any(g.drift for g in dec.gops),
            "decode_same_layout_drift": any(g.drift for g in same.gops),
            "decode_same_layout_equal": bool((same.video == enc.video).all()),
            "video_max_abs_diff_vs_1_device": int(np.max(np.abs(enc.video.astype(int) - ref.video.astype(int))))}


def batch(model, video) -> dict:
    """Three I2V chains (2, 1 and 3 GOPs) in one batch on all devices: each stream as coded alone."""
    from gvc_jax.codec.gop.plan import ArrayReader
    from gvc_jax.codec.gop.variants import I2V
    from gvc_jax.codec.session import encode_batch

    variant = I2V(anchor_codec="webp", anchor_quality=60, residual_step=0.25)
    clips = [video[:17], video[2:11], video[:25]]
    from gvc_jax.codec.gop.engine import GopEngine

    chunks, real = [], GopEngine.run_many

    def spy(self, gops, *a, **kw):
        chunks.append(len(gops))
        return real(self, gops, *a, **kw)

    GopEngine.run_many = spy
    try:
        results = encode_batch([ArrayReader(c, 25.0) for c in clips], model, SAMPLER, variant=variant,
                               gop_frames=GOP)
    finally:
        GopEngine.run_many = real
    alone = [encode_video(c, 25.0, model, SAMPLER, gop_frames=GOP, variant=variant, devices=1).stream for c in clips]
    return {"same_as_alone": [r.stream == a for r, a in zip(results, alone)], "chunk_sizes": chunks}


def abstract_memory() -> dict:
    """experiments/bench_gop.py --abstract on the tiny preset, whole and split over 4 devices."""
    import argparse

    from experiments.bench_gop import abstract_run
    from gvc_jax.codec.sampling.schedule import latent_frames
    from gvc_jax.models.configs import get_preset

    cfg = get_preset("tiny")
    latent = (latent_frames(GOP), 6, 8, cfg.vae.z_dim)
    out = {}
    for shards in (1, 4):
        info = abstract_run(argparse.Namespace(weight_shards=shards), cfg, SAMPLER, latent)
        out[shards] = info["memory_analysis"]["argument_size_in_bytes"]
    return out


def main() -> int:
    counts = sorted({1, 2, jax.local_device_count()})
    video, _ = read_video(sample_clip_path("bikes"), resize=(56, 40), max_frames=27)  # T2V: 3 GOPs
    tiny, anchored = init_preset("tiny"), init_preset("tiny-anchored")  # each model initialised once
    cases = {"t2v": (tiny, "t2v", video, None),
             # per-GOP atoms (rate control) as data, one row per GOP
             "t2v_gop_atoms": (tiny, "t2v", video, [(3, 3, 6), (1, 2, 3), (4, 4, 4)]),
             # FLF2V: boundary frames shared between GOPs that run side by side; 19 frames = 3 GOPs
             "flf2v": (anchored, FLF2V(anchor_codec="webp", anchor_quality=60), video[:19], None)}
    out = {"devices": jax.local_device_count(), "cases": {}}
    t2v_on_1 = None  # the T2V clip on 1 device: the reference of the split-weights encode
    for name, (model, variant, clip, gop_atoms) in cases.items():
        res = {}
        streams = {}
        for n in counts:
            enc = encode_video(clip, 25.0, model, SAMPLER, gop_frames=GOP, variant=variant, gop_atoms=gop_atoms,
                               devices=n)
            if name == "t2v" and n == 1:
                t2v_on_1 = enc
            streams[n] = enc.stream
            res[f"encode_{n}"] = {"stream": digest(enc.stream), "video": digest(enc.video.tobytes()),
                                  "gops": len(enc.gops),
                                  "mesh_sizes": sorted({k[2][0] for k in parallel._PROGRAMS})}
        for n_enc, n_dec in [(counts[-1], 1), (1, counts[-1])]:
            dec = decode_video(streams[n_enc], model, strict=True, devices=n_dec)
            res[f"decode_{n_enc}_on_{n_dec}"] = {"video": digest(dec.video.tobytes()),
                                                 "drift": any(g.drift for g in dec.gops)}
        out["cases"][name] = res
    out["weights"] = weight_sharding(tiny, video, t2v_on_1)
    out["batch"] = batch(anchored, video)
    out["abstract"] = abstract_memory()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
