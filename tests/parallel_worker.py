"""The worker of the topology matrix (tests/test_topology.py): codes the same clips with every
variant on the devices this process sees and returns (or prints, as one JSON line) their digests.

- 1 device: called in the pytest process (``code_matrix``), its streams are the references;
- 4 CPU devices: ``XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/parallel_worker.py OUT --extras``
  (its 1-device references made in the same process), with the split-weights, per-GOP-atoms,
  abstract-memory and multi-resolution (FLF2V with stages on 1 and 4 devices) checks (``--extras``);
- 2 processes x 2 CPU devices: ``... OUT --refs REF --distributed COORDINATOR PROCESS_ID`` in each (jax.distributed).

Per variant: the stream and the decoded video (same bytes), the reference stream decoded here and
this stream decoded on 1 device (cross-decode, strict), a batch of three chains (each stream equals
the video coded alone) and an encode stopped before its second chunk of GOPs, then resumed.
"""
import argparse
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # experiments/
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # conftest (the shared settings)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from conftest import GOP, SAMPLER, matrix_video, model_for, variant_for  # noqa: E402

import gvc_jax  # noqa: E402,F401  (XLA flags before jax)
from gvc_jax import parallel  # noqa: E402
from gvc_jax.codec.gop.engine import GopEngine  # noqa: E402
from gvc_jax.codec.gop.plan import ArrayReader  # noqa: E402
from gvc_jax.codec.session import decode_video, encode_batch, encode_stream, encode_video  # noqa: E402

VARIANTS = ("t2v", "flf2v", "i2v")


def digest(b) -> str:
    return hashlib.sha256(bytes(b)).hexdigest()[:16]


def batch_clips(video):
    """Three chains of 2, 1 and 3 GOPs (the last is the main clip, ``video[:25]``)."""
    return [video[:17], video[2:11], video[:25]]


class Interrupted(Exception):
    """Raised in place of a kill."""


def _resume(clip, model, variant, out_dir, name) -> dict:
    """The clip encoded with a resume journal and stopped, as a kill would, when its second chunk of
    GOPs is about to be coded (the first is journalled by then; a clip coded in one chunk is not
    stopped), then encoded again: -> the second run's stream and the GOPs it took from the journal."""
    path = os.path.join(out_dir, f"{name}.resumed.gvc")
    real, calls = GopEngine.run_many, []

    def stop_at_the_second_chunk(self, *a, **kw):
        calls.append(1)
        if len(calls) > 1:
            raise Interrupted
        return real(self, *a, **kw)

    GopEngine.run_many = stop_at_the_second_chunk
    try:
        encode_stream(ArrayReader(clip, 25.0), model, SAMPLER, variant=variant, gop_frames=GOP,
                      resume=path).journal.close()  # one chunk: every GOP journalled, none left to code
        interrupted = False
    except Interrupted:
        interrupted = True
    finally:
        GopEngine.run_many = real
    res = encode_stream(ArrayReader(clip, 25.0), model, SAMPLER, variant=variant, gop_frames=GOP, resume=path)
    res.journal.remove()
    return {"stream": digest(res.stream), "gops": len(res.gops), "interrupted": interrupted,
            "resumed": [g.index for g in res.gops if g.resumed]}


def code_matrix(models: dict, video, out_dir: str, refs: str | None = None, devices=None,
                resume_dir: str | None = None, reference_only: bool = False, encodes: dict | None = None) -> dict:
    """Every variant on ``devices`` (None: all of this process's, with jax.distributed all processes').
    ``refs``: the directory of the 1-device run's streams (None: this is the 1-device run);
    ``resume_dir``: where the resumed encodes write their journals (one directory for all processes);
    ``reference_only``: only the 1-device streams and videos (the references of another run here);
    ``encodes``: if given, receives each variant's encode of the main clip (for the extras)."""
    os.makedirs(out_dir, exist_ok=True)
    out: dict = {"devices": jax.device_count(), "processes": jax.process_count()}
    chunks, real = [], GopEngine.run_many

    def spy(self, gops, *a, **kw):
        chunks.append(len(gops))
        return real(self, gops, *a, **kw)

    for name in VARIANTS:
        model, variant, clips = models[name], variant_for(name), batch_clips(video)
        enc = encode_video(clips[2], 25.0, model, SAMPLER, gop_frames=GOP, variant=variant, devices=devices)
        res = {"stream": digest(enc.stream), "video": digest(enc.video.tobytes()), "gops": len(enc.gops)}
        if encodes is not None:
            encodes[name] = enc
        with open(os.path.join(out_dir, f"{name}.gvc"), "wb") as f:
            f.write(enc.stream)
        if refs is None:  # the references: each batch clip alone, and (repeatable) the clip coded again
            res["alone"] = [digest(encode_video(c, 25.0, model, SAMPLER, gop_frames=GOP, variant=variant,
                                                devices=devices).stream) for c in clips[:2]] + [res["stream"]]
            if reference_only:
                out[name] = res
                continue
            again = encode_video(clips[2], 25.0, model, SAMPLER, gop_frames=GOP, variant=variant, devices=devices)
            res["again"] = {"stream": digest(again.stream), "video": digest(again.video.tobytes())}
        ref = enc.stream if refs is None else open(os.path.join(refs, f"{name}.gvc"), "rb").read()
        dec = decode_video(ref, model, strict=True, devices=devices)  # strict: drift would raise
        res["decoded_ref"] = {"video": digest(dec.video.tobytes()), "drift": any(g.drift for g in dec.gops)}
        if refs is not None and jax.process_count() == 1:  # this stream decoded on 1 device of this process
            dec = decode_video(enc.stream, model, strict=True, devices=1)
            res["decoded_on_1"] = {"video": digest(dec.video.tobytes()), "drift": any(g.drift for g in dec.gops)}
        chunks.clear()
        GopEngine.run_many = spy
        try:
            results = encode_batch([ArrayReader(c, 25.0) for c in clips], model, SAMPLER, variant=variant,
                                   gop_frames=GOP, devices=devices)
        finally:
            GopEngine.run_many = real
        res["batch"] = [digest(r.stream) for r in results]
        res["batch_chunks"] = list(chunks)
        res["resume"] = _resume(clips[2], model, variant, resume_dir or out_dir, name)
        out[name] = res
    return out


# ----------------------------------------------------------------------------- 4 devices: the extras

def weight_sharding(model, video, ref) -> dict:
    """The DiT's weights split over 4 devices: the velocity, bytes per device, and a whole encode
    (``ref``: the same encode on 1 device with whole weights)."""
    import tempfile

    from flax import nnx

    from gvc_jax.models.registry import load_checkpoint
    from gvc_jax.parallel import GopMesh
    from weights_convert.model_writer import save_model

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
    x = plain.target_latents([frames])[0]
    t, feats = plain.trajectory.tables["t"][3], plain.trajectory.tables["t_feat"][3]
    cond = plain.unconditioned()[-1]  # the one stage's conditioning
    velocity = plain.trajectory._velocity
    u_plain = jax.jit(velocity)(params, x, t, feats, cond)
    u_split = jax.jit(velocity)(sharded, *split._on_mesh((x, t, feats, cond)))
    # a whole encode with 2 GOPs x 2 weight shards, decoded on 1 device
    mesh = GopMesh(n, weight_shards=2)
    enc = encode_video(video, 25.0, model, SAMPLER, gop_frames=GOP, devices=mesh)
    dec = decode_video(enc.stream, model, devices=1)
    same = decode_video(enc.stream, model, devices=GopMesh(n, weight_shards=2))
    # read straight onto the shards from a model directory: each device gets only its part
    with tempfile.TemporaryDirectory() as d:
        save_model(d + "/m", model.config, params, nnx.state(model.vae, nnx.Param))
        loaded = load_checkpoint(d + "/m", dit_sharding=split.weight_sharding)
    on_shards = [a for a in jax.tree.leaves(nnx.state(loaded.dit, nnx.Param)) if hasattr(a, "addressable_shards")]
    loaded_per_device = max(sum(s.data.nbytes for a in on_shards for s in a.addressable_shards if s.device == dv)
                            for dv in split.devices)
    loaded_same = all(np.array_equal(np.asarray(a), np.asarray(b))
                      for a, b in zip(on_shards, jax.tree.leaves(params), strict=True))
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


def abstract_memory() -> dict:
    """experiments/bench_gop.py --abstract on the tiny preset, whole and split over 4 devices."""
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


def stages_on_1_and_4(models: dict, video) -> dict:
    """FLF2V with a multi-resolution stage plan (one lower stage of 32x32 until step 2) on 1 device and
    on the 4 devices of this process (per-stage anchored conditioning under shard_map; T2V's stages
    are the same program), and the 1-device stream decoded on 4 devices, strictly: equal or not."""
    from gvc_jax.codec.sampling import multires

    sampler = SAMPLER.replace(stages=multires.StagePlan(((32, 32), (64, 48)), (2,)))
    model, variant = models["flf2v"], variant_for("flf2v")
    one = encode_video(video, 25.0, model, sampler, variant=variant, gop_frames=GOP, devices=1)
    four = encode_video(video, 25.0, model, sampler, variant=variant, gop_frames=GOP, devices=4)
    dec = decode_video(one.stream, model, devices=4, strict=True)
    from gvc_jax.codec.format import bitstream

    return {"devices": jax.local_device_count(), "gops": len(one.gops),
            "plan": bitstream.read(one.stream)[0].sampler.stages == sampler.stages,
            "same_stream": one.stream == four.stream, "same_video": bool((one.video == four.video).all()),
            "decoded_on_4": bool((dec.video == one.video).all())}


def extras(models: dict, video, on_1: dict, on_all: dict) -> dict:
    """On 1, 2 and all devices of this process: T2V with the per-GOP atoms as data (rate control, one
    row per GOP) and plain T2V, the split weights (reference: plain T2V on 1 device), and FLF2V with
    stages. ``video``: the matrix's main clip; ``on_1`` / ``on_all``: the matrix's encodes of it on 1
    and on all devices (plain T2V there is the same call: it is not coded again)."""
    counts = sorted({1, 2, jax.local_device_count()})
    out: dict = {}
    for name, gop_atoms in (("t2v", None), ("t2v_gop_atoms", [(3, 3, 6), (1, 2, 3), (4, 4, 4)])):
        res = {}
        for n in counts:
            known = {1: on_1, jax.local_device_count(): on_all}.get(n) if gop_atoms is None else None
            enc = known["t2v"] if known else encode_video(video, 25.0, models["t2v"], SAMPLER, gop_frames=GOP,
                                                          gop_atoms=gop_atoms, devices=n)
            sizes = sorted({k[1][0] for k in parallel._PROGRAMS})  # (key, mesh shape, device ids)
            res[f"encode_{n}"] = {"stream": digest(enc.stream), "video": digest(enc.video.tobytes()),
                                  "gops": len(enc.gops), "mesh_sizes": sizes}
        out[name] = res
    out["weights"] = weight_sharding(models["t2v"], video, on_1["t2v"])
    out["stages"] = stages_on_1_and_4(models, video)
    try:  # experiments/bench_gop.py follows the trajectory's internals: its failure fails only its own test
        out["abstract"] = abstract_memory()
    except Exception as e:  # noqa: BLE001
        out["abstract"] = {"error": f"{type(e).__name__}: {e}"}
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--refs")
    p.add_argument("--extras", action="store_true")
    p.add_argument("--distributed", nargs=2, metavar=("COORDINATOR", "PROCESS_ID"))
    p.add_argument("--init-timeout", type=int, default=300)
    args = p.parse_args()
    if args.distributed:
        parallel.init_distributed(args.distributed[0], 2, int(args.distributed[1]), args.init_timeout)
    video = matrix_video()
    models = {name: model_for(name) for name in VARIANTS}
    refs, reference, on_1, on_all = args.refs, None, {}, {}
    if not args.distributed:
        # XLA's CPU code depends on the host device count (the thread pool is split between the devices):
        # measured, a process with 4 host devices codes other FLF2V and I2V bytes and other T2V frames than
        # one with 1 or 2, even on one of its devices. So the references of this run are made here.
        refs = os.path.join(args.out, "one")
        reference = code_matrix(models, video, refs, devices=1, reference_only=True, encodes=on_1)
    out = code_matrix(models, video, os.path.join(args.out, f"p{jax.process_index()}"), refs, resume_dir=args.out,
                      encodes=on_all)
    out["reference"] = reference
    if args.extras:
        out["extras"] = extras(models, batch_clips(video)[2], on_1, on_all)
    if jax.process_index() == 0:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
