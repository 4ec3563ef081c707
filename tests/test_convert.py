"""Checkpoint conversion (diffusers and original Wan layouts) -> converted model dir -> load_model.

Oracles are tiny diffusers models built on CPU torch
(docs/method_notes.md §Parity test models). The original-layout files
are produced here with an inverse of the published diffusers conversion mapping, written
independently of ``weights_convert.rules``.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
from safetensors.torch import save_file  # noqa: E402

from gvc_jax.models.checkpoint import (  # noqa: E402
    CheckpointError,
    fingerprint,
    load_model,
    path_str,
    stack_layers,
)
from gvc_jax.models.configs import DIT_PRESETS, TINY_VAE, get_preset  # noqa: E402
from weights_convert import convert_diffusers, convert_dit, convert_original  # noqa: E402
from weights_convert.__main__ import main as cli_main  # noqa: E402
from weights_convert.model_writer import save_model  # noqa: E402
from weights_convert.sources import read_safetensors  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, out_channels=4, text_dim=32,
              freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
              eps=1e-6, rope_max_seq_len=32)
EXTRA = {"t2v": dict(in_channels=4),
         "flf2v": dict(in_channels=12, image_dim=24, added_kv_proj_dim=32, pos_embed_seq_len=34)}
VAE_KW = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
              temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)


# ----------------------------------------------------------------------------- inverse mapping
# diffusers -> original Wan names (from the published convert_wan_to_diffusers tables, inverted).
_TOP = {
    "patch_embedding": "patch_embedding",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "condition_embedder.image_embedder.pos_embed": "img_emb.emb_pos",
    "proj_out": "head.head",
    "scale_shift_table": "head.modulation",
}
_BLOCK = {
    "scale_shift_table": "modulation",
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o", "attn1.norm_q": "self_attn.norm_q", "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k", "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o", "attn2.norm_q": "cross_attn.norm_q", "attn2.norm_k": "cross_attn.norm_k",
    "attn2.add_k_proj": "cross_attn.k_img", "attn2.add_v_proj": "cross_attn.v_img",
    "attn2.norm_added_k": "cross_attn.norm_k_img",
    "norm2": "norm3",  # diffusers' affine cross-attention norm is the reference's norm3
    "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2",
}
_RESNET = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
           "conv_shortcut": "shortcut"}


def _split_module(key, table):
    """(module, leaf) with module the longest table entry that prefixes key."""
    for mod in sorted(table, key=len, reverse=True):
        if key == mod:
            return mod, None
        if key.startswith(mod + ".") and "." not in key[len(mod) + 1:]:
            return mod, key[len(mod) + 1:]
    raise KeyError(key)


def dit_to_original(key):
    if key.startswith("blocks."):
        _, i, rest = key.split(".", 2)
        mod, leaf = _split_module(rest, _BLOCK)
        return f"blocks.{i}.{_BLOCK[mod]}" + (f".{leaf}" if leaf else "")
    mod, leaf = _split_module(key, _TOP)
    return _TOP[mod] + (f".{leaf}" if leaf else "")


def _resnet_tail(parts):
    return f"{_RESNET[parts[0]]}.{parts[1]}"


def vae_to_original(key, num_res_blocks):
    p = key.split(".")
    if p[0] == "quant_conv":
        return f"conv1.{p[1]}"
    if p[0] == "post_quant_conv":
        return f"conv2.{p[1]}"
    side, rest = p[0], p[1:]
    if rest[0] == "conv_in":
        return f"{side}.conv1.{rest[1]}"
    if rest[0] == "norm_out":
        return f"{side}.head.0.{rest[1]}"
    if rest[0] == "conv_out":
        return f"{side}.head.2.{rest[1]}"
    if rest[0] == "mid_block":
        if rest[1] == "attentions":
            return f"{side}.middle.1." + ".".join(rest[3:])
        return f"{side}.middle.{2 * int(rest[2])}." + _resnet_tail(rest[3:])
    if rest[0] == "down_blocks":
        k, tail = rest[1], rest[2:]
        if tail[0] in _RESNET:
            return f"encoder.downsamples.{k}." + _resnet_tail(tail)
        return f"encoder.downsamples.{k}." + ".".join(tail)
    if rest[0] == "up_blocks":
        stride = num_res_blocks + 2
        j = int(rest[1])
        if rest[2] == "resnets":
            return f"decoder.upsamples.{j * stride + int(rest[3])}." + _resnet_tail(rest[4:])
        assert rest[2:4] == ["upsamplers", "0"], key
        return f"decoder.upsamples.{j * stride + stride - 1}." + ".".join(rest[4:])
    raise KeyError(key)


# ----------------------------------------------------------------------------- fixtures

def _torch_models(variant):
    torch.manual_seed(0 if variant == "t2v" else 1)
    dit = diffusers.WanTransformer3DModel(**COMMON, **EXTRA[variant]).eval()
    with torch.no_grad():  # non-trivial norm weights / tables so that mix-ups show
        for name, p in dit.named_parameters():
            if "norm" in name or "scale_shift_table" in name or "pos_embed" in name:
                p.add_(0.1 * torch.randn_like(p))
    torch.manual_seed(2)
    vae = diffusers.AutoencoderKLWan(**VAE_KW).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.add_(0.1 * torch.randn_like(p))
    return dit, vae


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert")
    out = {"root": root}
    for variant in ("t2v", "flf2v"):
        dit, vae = _torch_models(variant)
        src = root / f"src_{variant}"
        # the FLF2V transformer is saved sharded (index json + many shards)
        dit.save_pretrained(src / "transformer", **({"max_shard_size": "20KB"} if variant == "flf2v" else {}))
        vae.save_pretrained(src / "vae")
        summary = convert_diffusers(str(src / "transformer"), str(src / "vae"), str(root / f"out_{variant}"),
                                    preset=f"tiny-{variant}")
        out[variant] = dict(dit=dit, vae=vae, src=src, summary=summary, out=root / f"out_{variant}")
    assert (out["flf2v"]["src"] / "transformer" / "diffusion_pytorch_model.safetensors.index.json").exists()
    return out


_LOADED = {}


def _loaded(work, variant):
    """load_model of a fixture conversion, once per variant."""
    if variant not in _LOADED:
        _LOADED[variant] = load_model(str(work[variant]["out"]))
    return _LOADED[variant]


def _np_flat(state):
    return {path_str(p): np.asarray(v[...]) for p, v in state.flat_state()}


# ----------------------------------------------------------------------------- parity

@pytest.mark.parametrize("variant", ["t2v", "flf2v"])
def test_diffusers_layout_dit_forward_matches_torch(work, variant):
    w = work[variant]
    loaded = _loaded(work, variant)
    assert loaded.fingerprint == w["summary"]["fingerprint"]
    assert loaded.config.name == f"tiny-{variant}" and loaded.config.dit == DIT_PRESETS[f"tiny-{variant}"]
    g = torch.Generator().manual_seed(3)
    b, c, f, h, wd = 1, loaded.config.dit.in_channels, 3, 8, 8
    x = torch.randn(b, c, f, h, wd, generator=g)
    t = torch.tensor([637.0])
    ctx = torch.randn(b, 512, 32, generator=g)
    kw, img_j = {}, None
    if variant == "flf2v":
        img = torch.randn(2 * b, 17, 24, generator=g)  # first, last
        kw["encoder_hidden_states_image"] = img
        img_j = img.numpy().reshape(b, 34, 24)
    with torch.no_grad():
        ref = w["dit"](x, t, ctx, return_dict=False, **kw)[0].numpy().transpose(0, 2, 3, 4, 1)
    graphdef, state = nnx.split(loaded.dit)
    fwd = jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))
    with jax.default_matmul_precision("highest"):
        got = np.asarray(fwd(state, x.numpy().transpose(0, 2, 3, 4, 1), t.numpy(), ctx.numpy(), img_j))
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 2e-5


def test_diffusers_layout_vae_encode_matches_torch(work):
    w = work["t2v"]
    loaded = _loaded(work, "t2v")
    x = torch.rand(1, 3, 9, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        ref = w["vae"].encode(x).latent_dist.mode().numpy().transpose(0, 2, 3, 4, 1)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(loaded.vae.encode(x.numpy().transpose(0, 2, 3, 4, 1)))
    assert got.shape == ref.shape == (1, 3, 2, 2, 4)
    assert np.abs(got - ref).max() < 1e-4
    # decoder weights (upsamplers, time_conv, channel-changing shortcuts) through a decode
    z = torch.randn(1, 4, 2, 2, 2, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = w["vae"].decode(z).sample.numpy().transpose(0, 2, 3, 4, 1)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(loaded.vae.decode(z.numpy().transpose(0, 2, 3, 4, 1)))
    assert got.shape == ref.shape == (1, 5, 16, 16, 3)
    assert np.abs(got - ref).max() < 1e-4


# ----------------------------------------------------------------------------- fingerprint

def test_fingerprint_stable_and_sensitive(work, tmp_path):
    w = work["t2v"]
    again = convert_diffusers(str(w["src"] / "transformer"), str(w["src"] / "vae"), str(tmp_path / "again"))
    assert again["fingerprint"] == w["summary"]["fingerprint"]
    assert again["name"] == "custom"
    # one changed weight -> another fingerprint
    dit = w["dit"]
    with torch.no_grad():
        p = dict(dit.named_parameters())["blocks.1.ffn.net.2.weight"]
        p[0, 0] += 1e-3
        dit.save_pretrained(tmp_path / "changed")
        p[0, 0] -= 1e-3
    changed = convert_diffusers(str(tmp_path / "changed"), str(w["src"] / "vae"), str(tmp_path / "changed_out"))
    assert changed["fingerprint"] != w["summary"]["fingerprint"]
    # the fingerprint covers dtype and paths too
    state = convert_dit(read_safetensors(str(w["src"] / "transformer")), DIT_PRESETS["tiny-t2v"])
    bf16 = convert_dit(read_safetensors(str(w["src"] / "transformer")),
                       DIT_PRESETS["tiny-t2v"].replace(param_dtype="bfloat16"))
    assert fingerprint(state) != fingerprint(bf16)
    assert fingerprint(state) == fingerprint(_np_flat(state))


# ----------------------------------------------------------------------------- original layout

def _write_original(work, root):
    w = work["flf2v"]
    dit_sd = {dit_to_original(k): v.detach().clone().contiguous() for k, v in w["dit"].state_dict().items()}
    assert len(dit_sd) == len(w["dit"].state_dict()) == 88
    assert "blocks.0.norm3.weight" in dit_sd and "img_emb.proj.4.bias" in dit_sd and "img_emb.emb_pos" in dit_sd
    save_file(dit_sd, str(root / "dit.safetensors"))
    vae_sd = {vae_to_original(k, VAE_KW["num_res_blocks"]): v.detach().clone()
              for k, v in w["vae"].state_dict().items()}
    assert len(vae_sd) == len(w["vae"].state_dict())
    assert "decoder.upsamples.5.time_conv.weight" in vae_sd and "decoder.upsamples.10.residual.6.bias" in vae_sd
    torch.save(vae_sd, str(root / "Wan2.1_VAE.pth"))
    return dit_sd, vae_sd


def test_original_layout_bitwise_equal_to_diffusers_layout(work, tmp_path):
    _write_original(work, tmp_path)
    summary = convert_original(str(tmp_path / "dit.safetensors"), str(tmp_path / "Wan2.1_VAE.pth"), "tiny-flf2v",
                               str(tmp_path / "out"))
    assert summary["fingerprint"] == work["flf2v"]["summary"]["fingerprint"]
    a, b = load_model(str(tmp_path / "out")), _loaded(work, "flf2v")
    for m in ("dit", "vae"):
        fa, fb = _np_flat(nnx.state(getattr(a, m), nnx.Param)), _np_flat(nnx.state(getattr(b, m), nnx.Param))
        assert fa.keys() == fb.keys()
        for k in fa:
            assert fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]), k


def test_original_layout_rule_errors(work, tmp_path):
    dit_sd, vae_sd = _write_original(work, tmp_path)
    # an image rule that matches nothing for an FLF2V preset
    no_pos = {k: v for k, v in dit_sd.items() if k != "img_emb.emb_pos"}
    save_file(no_pos, str(tmp_path / "no_pos.safetensors"))
    with pytest.raises(CheckpointError, match=r"img_emb\\\.emb_pos") as e:
        convert_original(str(tmp_path / "no_pos.safetensors"), str(tmp_path / "Wan2.1_VAE.pth"), "tiny-flf2v",
                         str(tmp_path / "o1"))
    assert "\n" not in str(e.value)
    # a stray key
    save_file({**dit_sd, "blocks.0.foo.weight": dit_sd["blocks.0.norm3.weight"].clone()},
              str(tmp_path / "x.safetensors"))
    with pytest.raises(CheckpointError, match=r"blocks\.0\.foo\.weight"):
        convert_original(str(tmp_path / "x.safetensors"), str(tmp_path / "Wan2.1_VAE.pth"), "tiny-flf2v",
                         str(tmp_path / "o2"))
    # a decoder residual block at an upsampler index (stride num_res_blocks + 2 = 3)
    bad = dict(vae_sd)
    bad["decoder.upsamples.2.residual.0.gamma"] = bad.pop("decoder.upsamples.1.residual.0.gamma")
    torch.save(bad, str(tmp_path / "bad.pth"))
    with pytest.raises(CheckpointError, match=r"decoder\.upsamples\.2"):
        convert_original(str(tmp_path / "dit.safetensors"), str(tmp_path / "bad.pth"), "tiny-flf2v",
                         str(tmp_path / "o3"))
    assert not any(p.name.startswith(("o1", "o2", "o3", ".o")) for p in tmp_path.iterdir())


# ----------------------------------------------------------------------------- failures

def _broken_transformer(work, root, edit):
    sd = {k: v.detach().clone().contiguous() for k, v in work["t2v"]["dit"].state_dict().items()}
    edit(sd)
    os.makedirs(root / "transformer")
    save_file(sd, str(root / "transformer" / "diffusion_pytorch_model.safetensors"))
    shutil.copy(work["t2v"]["src"] / "transformer" / "config.json", root / "transformer" / "config.json")
    shutil.copytree(work["t2v"]["src"] / "vae", root / "vae")
    return root


CASES = {
    "missing": (lambda sd: sd.pop("blocks.1.attn2.to_k.weight"), r"missing parameter blocks/1/attn2/to_k/kernel"),
    "extra": (lambda sd: sd.__setitem__("blocks.0.attn1.bogus.weight", torch.zeros(3)),
              r"blocks\.0\.attn1\.bogus\.weight"),
    "shape": (lambda sd: sd.__setitem__("proj_out.bias", torch.zeros(17)), r"shape mismatch for 'proj_out\.bias'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_checkpoint_one_line_error(work, tmp_path, case, capsys):
    edit, pattern = CASES[case]
    src = _broken_transformer(work, tmp_path / "src", edit)
    with pytest.raises(CheckpointError, match=pattern) as e:
        convert_diffusers(str(src / "transformer"), str(src / "vae"), str(tmp_path / "out"))
    assert "\n" not in str(e.value)
    assert cli_main(["diffusers", str(src), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["src"]


def test_cli_subprocess_error_and_success(work, tmp_path):
    src = _broken_transformer(work, tmp_path / "src", CASES["missing"][0])
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
    r = subprocess.run([sys.executable, "-m", "weights_convert", "diffusers", str(src), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
    assert len(lines) == 1 and "blocks/1/attn2/to_k/kernel" in lines[0] and "Traceback" not in r.stderr
    assert not os.path.exists(tmp_path / "o")
    w = work["t2v"]
    r = subprocess.run([sys.executable, "-m", "weights_convert", "diffusers",
                        "--transformer", str(w["src"] / "transformer"),
                        "--vae", str(w["src"] / "vae"), "--out", str(tmp_path / "ok"), "--preset", "tiny-t2v"],
                       capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert w["summary"]["fingerprint"] in r.stdout and "37,744" in r.stdout



def test_cli_refuses_existing_output(work, tmp_path, capsys):
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "x").write_text("x")
    assert cli_main(["diffusers", str(work["t2v"]["src"]), "--out", str(tmp_path / "ok"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and err.count("\n") == 1
    assert cli_main(["diffusers", str(tmp_path / "nothing"), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_preset_mismatch_is_refused(work, tmp_path):
    w = work["t2v"]
    with pytest.raises(CheckpointError, match="differs from preset 'tiny-flf2v'"):
        convert_diffusers(str(w["src"] / "transformer"), str(w["src"] / "vae"), str(tmp_path / "o"),
                          preset="tiny-flf2v")


# ----------------------------------------------------------------------------- scan layers

def test_scan_layers_conversion_equals_unrolled(work):
    src = read_safetensors(str(work["flf2v"]["src"] / "transformer"))
    cfg = DIT_PRESETS["tiny-flf2v"]
    unrolled = convert_dit(src, cfg)
    stacked = convert_dit(src, cfg.replace(scan_layers=True))
    fs, fu = _np_flat(stacked), _np_flat(unrolled)
    assert "blocks/attn1/to_q/kernel" in fs and fs["blocks/attn1/to_q/kernel"].shape == (2, 32, 32)
    for k, v in fs.items():
        if k.startswith("blocks/"):
            rest = k[len("blocks/"):]
            expect = np.stack([fu[f"blocks/{i}/{rest}"] for i in range(cfg.num_layers)])
        else:
            expect = fu[k]
        assert np.array_equal(v, expect), k
    # load_model restacks to the same leaves
    loaded = load_model(str(work["flf2v"]["out"]), scan_layers=True)
    assert loaded.config.dit.scan_layers
    assert _np_flat(nnx.state(loaded.dit, nnx.Param)).keys() == fs.keys()
    assert fingerprint(_np_flat(nnx.state(loaded.dit, nnx.Param))) == fingerprint(fs)
    assert fingerprint(stack_layers(unrolled, 2)) == fingerprint(stacked)


# ----------------------------------------------------------------------------- load errors

def test_load_model_errors(work, tmp_path):
    good = work["t2v"]["out"]
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(str(tmp_path / "nope"))

    d = tmp_path / "corrupt_json"
    shutil.copytree(good, d)
    (d / "gvc_model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt") as e:
        load_model(str(d))
    assert "\n" not in str(e.value)

    d = tmp_path / "no_vae"
    shutil.copytree(good, d)
    shutil.rmtree(d / "vae")
    with pytest.raises(CheckpointError, match="vae.*missing"):
        load_model(str(d))

    d = tmp_path / "wrong_config"
    shutil.copytree(good, d)
    m = json.loads((d / "gvc_model.json").read_text())
    m["dit"]["ffn_dim"] = 48
    (d / "gvc_model.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="ffn/proj_in/kernel"):
        load_model(str(d))

    # tampered weights: a valid checkpoint whose bytes differ from the fingerprinted ones
    d = tmp_path / "tampered"
    shutil.copytree(good, d)
    loaded = _loaded(work, "t2v")
    dit = nnx.state(loaded.dit, nnx.Param)
    flat = {p: v for p, v in dit.flat_state()}
    p = ("blocks", 0, "attn1", "to_q", "kernel")
    flat[p] = flat[p].replace(flat[p][...].at[0, 0].add(1e-6))
    tampered = nnx.State.from_flat_path(flat)
    save_model(str(tmp_path / "tmp_model"), loaded.config, tampered, nnx.state(loaded.vae, nnx.Param))
    shutil.rmtree(d / "dit")
    shutil.copytree(tmp_path / "tmp_model" / "dit", d / "dit")
    with pytest.raises(CheckpointError, match="fingerprint mismatch") as e:
        load_model(str(d))
    assert "\n" not in str(e.value)


def test_save_model_refuses_overwrite(work, tmp_path):
    loaded = _loaded(work, "t2v")
    args = (loaded.config, nnx.state(loaded.dit, nnx.Param), nnx.state(loaded.vae, nnx.Param))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "keep.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not empty"):
        save_model(str(tmp_path / "m"), *args)
    fp = save_model(str(tmp_path / "m"), *args, overwrite=True)
    assert fp == loaded.fingerprint and not (tmp_path / "m" / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert load_model(str(tmp_path / "m")).fingerprint == fp
    assert get_preset("tiny-t2v").vae == TINY_VAE


def test_stray_norm_added_q_is_ignored_and_bf16_sources(work, tmp_path):
    src = dict(read_safetensors(str(work["flf2v"]["src"] / "transformer")))
    cfg = DIT_PRESETS["tiny-flf2v"]
    ref = fingerprint(convert_dit(src, cfg))
    src["blocks.0.attn2.norm_added_q.weight"] = src["blocks.0.attn2.norm_added_k.weight"]
    assert fingerprint(convert_dit(src, cfg)) == ref
    src["blocks.0.attn2.norm_added_z.weight"] = src["blocks.0.attn2.norm_added_k.weight"]
    with pytest.raises(CheckpointError, match="norm_added_z"):
        convert_dit(src, cfg)
    # bf16 / fp16 safetensors are read without torch, bit-exactly
    t = {"a": torch.randn(3, 5).to(torch.bfloat16), "b": torch.randn(4).to(torch.float16),
         "c": torch.arange(6).reshape(2, 3)}
    save_file(t, str(tmp_path / "m.safetensors"))
    lazy = read_safetensors(str(tmp_path / "m.safetensors"))
    assert lazy["a"].dtype == "bfloat16" and lazy["a"].shape == (3, 5)
    assert np.array_equal(lazy["a"].load().astype(np.float32), t["a"].float().numpy())
    assert np.array_equal(lazy["b"].load(), t["b"].numpy()) and np.array_equal(lazy["c"].load(), t["c"].numpy())


def _imported_modules(path: str) -> set:
    """Every module an ``import`` / ``from ... import`` anywhere in ``path`` names (also inside
    functions), with ``from P import m`` counted as ``P.m``; relative imports are resolved in
    gvc_jax.models."""
    import ast

    with open(path) as f:
        tree = ast.parse(f.read(), filename=path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = "gvc_jax.models".split(".")[: 2 - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def test_models_do_not_import_checkpoint():
    """checkpoint imports dit / vae, never the other way round: no import cycle."""
    models_dir = os.path.join(REPO, "gvc_jax", "models")
    files = sorted(f for f in os.listdir(models_dir)
                   if f.endswith(".py") and f not in ("checkpoint.py", "registry.py", "text.py"))
    assert {"dit.py", "vae.py"} <= set(files)
    for f in files:
        bad = {m for m in _imported_modules(os.path.join(models_dir, f))
               if m == "gvc_jax.models.checkpoint" or m.startswith("gvc_jax.models.checkpoint.")}
        assert not bad, f"gvc_jax/models/{f} imports {sorted(bad)}"


def test_runtime_does_not_import_the_converter():
    """The converter (weights_convert) builds on the runtime (gvc_jax), never the other way round:
    the runtime keeps only what loading a converted model needs."""
    root = os.path.join(REPO, "gvc_jax")
    files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".py")]
    assert len(files) > 20
    for path in files:
        bad = {m for m in _imported_modules(path) if m == "weights_convert" or m.startswith("weights_convert.")}
        assert not bad, f"{os.path.relpath(path, REPO)} imports {sorted(bad)}"
    from gvc_jax.models import checkpoint

    for name in ("convert_state", "torch_to_flax", "LazyTensor", "ModelWriter", "save_model"):
        assert not hasattr(checkpoint, name), name
