"""A whole release in one command, then I2V / FLF2V through the CLI with CLIP tokens and prompts.

Tiny I2V and FLF2V DiTs, a tiny VAE (diffusers), a tiny umT5 and a tiny CLIP vision tower
(transformers) and a tiny tokenizer (tokenizers) are laid out as a diffusers release directory,
converted with ``python -m weights_convert release``, and used by ``gvc_jax.encode`` / ``decode``.
"""
import json
import os

import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from gvc_jax import cli  # noqa: E402
from gvc_jax import decode as decode_cli  # noqa: E402
from gvc_jax import encode as encode_cli  # noqa: E402
from gvc_jax.io.video_reader import read_video  # noqa: E402
from gvc_jax.io.video_writer import write_video  # noqa: E402
from weights_convert.__main__ import main as convert_main  # noqa: E402

COMMON = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, out_channels=4, text_dim=32,
              freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
              eps=1e-6, rope_max_seq_len=32, in_channels=12, image_dim=24, added_kv_proj_dim=32)
EXTRA = {"i2v": {}, "flf2v": dict(pos_embed_seq_len=34)}
VAE_KW = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
              temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
FAST = ["-K", "512", "-M", "3", "--steps", "4", "--tail", "1", "--gop-frames", "9", "--quiet",
        "--anchor-codec", "webp", "--anchor-quality", "50"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def tiny_tokenizer(path):
    """A T5-style Unigram tokenizer (pad 0, EOS 1, unk 2) over letters and a few words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in LETTERS] + [("\u2581" + w, -1.0) for w in ("a", "red", "bike", "the", "road")]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tok.save(str(path))
    return len(vocab)


def make_release(root, variant):
    """A diffusers-layout release directory of tiny random models."""
    torch.manual_seed(3)
    dit = diffusers.WanTransformer3DModel(**COMMON, **EXTRA[variant]).eval()
    dit.save_pretrained(root / "transformer")
    diffusers.AutoencoderKLWan(**VAE_KW).eval().save_pretrained(root / "vae")
    n_vocab = tiny_tokenizer(root / "tokenizer" / "tokenizer.json")
    t5 = transformers.UMT5EncoderModel(transformers.UMT5Config(
        vocab_size=n_vocab + 4, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu"))
    t5.eval().save_pretrained(root / "text_encoder")
    clip = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=24, intermediate_size=48, num_hidden_layers=3, num_attention_heads=2, image_size=32,
        patch_size=8, hidden_act="gelu"))
    clip.eval().save_pretrained(root / "image_encoder")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanImageToVideoPipeline"}))
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    out = {}
    for variant in ("i2v", "flf2v"):
        src = make_release(root / f"Wan-tiny-{variant}", variant)
        model = root / f"model-{variant}"
        if variant == "i2v":  # the command line, the DiT in one part of <= 1 MiB
            assert cli.run_main(convert_main, ["release", str(src), "--out", str(model), "--quiet"]) == 0
        else:  # the DiT written in parts of about 40 kB
            from weights_convert.release import convert_release

            out["flf2v_summary"] = convert_release(str(src), str(model), part_bytes=40_000)
        out[variant] = dict(src=src, model=model)
    rng = np.random.default_rng(5)
    frames = np.clip(rng.integers(0, 200, (1, 48, 64, 3)) + 5 * np.arange(17)[:, None, None, None], 0, 255)
    out["clip"] = str(root / "in.npy")
    write_video(out["clip"], frames.astype(np.uint8), 16.0)
    return out


def test_one_command_writes_every_part(work):
    model = work["flf2v"]["model"]
    manifest = json.loads((model / "gvc_model.json").read_text())
    assert manifest["variant"] == "flf2v" and set(manifest["encoders"]) == {"image_encoder", "text_encoder"}
    assert manifest["encoders"]["image_encoder"]["config"]["preprocess"] == "wan"
    assert manifest["source"]["clip_preprocess"] == "wan"
    for part in ("dit", "vae", "image_encoder", "text_encoder", "tokenizer.json", "context.npy"):
        assert (model / part).exists(), part
    rows = np.load(model / "context.npy")
    assert rows.shape == (1, 32) and np.abs(rows).max() > 0  # the empty prompt is one token (EOS)


def test_the_dit_in_parts_is_the_same_model(work, tmp_path):
    """Parts are consecutive leaves: the fingerprint and the weights equal a one-part conversion."""
    from gvc_jax.models.checkpoint import load_model
    from weights_convert.release import convert_release

    parted = json.loads((work["flf2v"]["model"] / "gvc_model.json").read_text())
    assert parted["parts"]["dit"] == work["flf2v_summary"]["dit_parts"] > 2
    whole = convert_release(str(work["flf2v"]["src"]), str(tmp_path / "whole"), part_bytes=1 << 30)
    assert whole["dit_parts"] == 1 and whole["fingerprint"] == parted["fingerprint"]
    a, b = load_model(str(work["flf2v"]["model"])), load_model(str(tmp_path / "whole"))
    for (pa, va), (pb, vb) in zip(nnx.state(a.dit, nnx.Param).flat_state(), nnx.state(b.dit, nnx.Param).flat_state(),
                                  strict=False):
        assert pa == pb
        np.testing.assert_array_equal(np.asarray(va[...]), np.asarray(vb[...]))


def test_empty_prompt_context_is_the_umt5_output_of_eos(work):
    t5 = transformers.UMT5EncoderModel.from_pretrained(work["i2v"]["src"] / "text_encoder").eval()
    with torch.no_grad():
        want = t5(input_ids=torch.tensor([[1]])).last_hidden_state[0].numpy()
    np.testing.assert_allclose(np.load(work["i2v"]["model"] / "context.npy"), want, atol=1e-5)


@pytest.mark.parametrize("variant", ["i2v", "flf2v"])
def test_encode_decode_through_the_cli(work, variant, tmp_path, monkeypatch):
    monkeypatch.setenv("GVC_JAX_CACHE", str(tmp_path / "cache"))
    model = str(work[variant]["model"])
    gvc, rec, js = str(tmp_path / "a.gvc"), str(tmp_path / "rec.npy"), str(tmp_path / "a.json")
    assert cli.run_main(encode_cli.main, [work["clip"], "-o", gvc, "--model", model, "--variant", variant, *FAST,
                                          "--prompt", "a red bike", "--decoded", rec, "--json", js]) == 0
    report = json.load(open(js))
    assert report["prompt"] == "a red bike" and report["anchor_bytes"] > 0
    assert len(os.listdir(tmp_path / "cache" / "text")) == 1  # the prompt's rows, cached by hash
    out = str(tmp_path / "out.npy")
    assert cli.run_main(decode_cli.main, [gvc, "-o", out, "--model", model, "--quiet", "--strict"]) == 0
    np.testing.assert_array_equal(read_video(out)[0], read_video(rec)[0])


def test_image_tokens_come_from_the_decoded_anchors(work, tmp_path):
    """Closed loop: CLIP sees the anchors as the decoder has them (coded), not the source frames."""
    from gvc_jax.codec.format import bitstream
    from gvc_jax.codec.gop import engine
    from gvc_jax.codec.gop.variants import FLF2V
    from gvc_jax.codec.payloads import anchors
    from gvc_jax.codec.sampling.schedule import SamplerConfig
    from gvc_jax.codec.session import encode_video
    from gvc_jax.models.registry import resolve_model

    model = resolve_model(str(work["flf2v"]["model"]))
    video = read_video(work["clip"])[0]
    seen = []
    original = engine.GopEngine.image_tokens

    def spy(self, images):
        seen.append([np.array(i) for i in images])
        return original(self, images)

    engine.GopEngine.image_tokens = spy
    try:
        # the codebook and atom slots of FAST: the trajectory compiled for the FLF2V command line is reused
        sampler = SamplerConfig(steps=4, tail=1, g_scale=3.0, shift=3.0, K=512, atoms_per_frame=(3, 3, 3), seed=1)
        enc = encode_video(video, 16.0, model, sampler, gop_frames=9,
                           variant=FLF2V(anchor_codec="webp", anchor_quality=30))
    finally:
        engine.GopEngine.image_tokens = original
    header, records = bitstream.read(enc.stream)
    coded = [anchors.unpack_anchor(d, header.height, header.width) for r in records for _, d in r.side]
    assert len(seen) == 2 and len(coded) == 3  # 2 GOPs, boundaries 0, 8, 16 coded once
    np.testing.assert_array_equal(seen[0][0], coded[0])
    np.testing.assert_array_equal(seen[0][1], coded[1])
    np.testing.assert_array_equal(seen[1][0], coded[1])  # the shared boundary, decoded once
    np.testing.assert_array_equal(seen[1][1], coded[2])
    assert not np.array_equal(seen[0][0], video[0])  # webp at quality 30 is lossy


def test_prompt_changes_the_reconstruction_and_needs_a_text_encoder(work, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GVC_JAX_CACHE", str(tmp_path / "cache"))
    model = str(work["i2v"]["model"])
    recs = []
    for i, prompt in enumerate(("", "the road")):
        rec = str(tmp_path / f"rec{i}.npy")
        assert cli.run_main(encode_cli.main, [work["clip"], "-o", str(tmp_path / f"{i}.gvc"), "--model", model,
                                              "--variant", "i2v", *FAST, "--prompt", prompt, "--decoded", rec]) == 0
        recs.append(read_video(rec)[0])
    assert not np.array_equal(recs[0], recs[1])
    capsys.readouterr()
    assert cli.run_main(encode_cli.main, [work["clip"], "-o", str(tmp_path / "x.gvc"), "--model", "preset:tiny",
                                          "--prompt", "a red bike", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "text encoder" in err[0]
    assert cli.run_main(encode_cli.main, [work["clip"], "-o", str(tmp_path / "x.gvc"), "--model", model,
                                          "--prompt", "x" * 3000, "--quiet"]) == 2
    assert "2048" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.gvc")


@pytest.mark.parametrize("part,needle", [("image_encoder", "CLIP image encoder"),
                                         ("text_encoder", "umT5 text encoder"),
                                         ("tokenizer", "umT5 tokenizer")])
def test_a_missing_part_is_one_line_naming_it(work, tmp_path, capsys, part, needle):
    import shutil

    src = tmp_path / "rel"
    shutil.copytree(work["i2v"]["src"], src)
    shutil.rmtree(src / part)
    capsys.readouterr()
    assert cli.run_main(convert_main, ["release", str(src), "--out", str(tmp_path / "m"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (tmp_path / "m").exists()


# ----------------------------------------------------------------------------- from the Hugging Face Hub


def _hub_cache(home, repo, release, revision="0123456789abcdef0123456789abcdef01234567"):
    """``release`` laid out in a Hub cache as snapshot_download leaves it: HF_HOME/hub/models--ORG--NAME/
    snapshots/REV/... and refs/main -> REV (plain files where the Hub cache has links to blobs)."""
    import shutil

    repo_dir = home / "hub" / ("models--" + repo.replace("/", "--"))
    shutil.copytree(release, repo_dir / "snapshots" / revision)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return revision


def test_release_from_the_hub_cache_offline(work, tmp_path, monkeypatch, capsys):
    """hf:ORG/NAME with HF_HUB_OFFLINE=1 and a cached snapshot converts it as a local directory (same
    fingerprint, named after the repository), without a connection; @REVISION picks the snapshot."""
    import socket

    def no_network(*a, **k):
        raise AssertionError("HF_HUB_OFFLINE=1 but a connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    home = tmp_path / "hf"
    rev = _hub_cache(home, "Wan-AI/Wan-tiny-i2v", work["i2v"]["src"])
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "model"
    assert cli.run_main(convert_main, ["release", "hf:Wan-AI/Wan-tiny-i2v", "--out", str(out), "--quiet"]) == 0
    got = json.loads((out / "gvc_model.json").read_text())
    want = json.loads((work["i2v"]["model"] / "gvc_model.json").read_text())
    assert got["fingerprint"] == want["fingerprint"] and got["name"] == "Wan-tiny-i2v"
    capsys.readouterr()
    assert cli.run_main(convert_main, ["release", f"hf:Wan-AI/Wan-tiny-i2v@{rev}", "--out", str(tmp_path / "m2"),
                                       "--quiet", "--name", "pinned"]) == 0
    assert json.loads((tmp_path / "m2" / "gvc_model.json").read_text())["name"] == "pinned"


def test_hub_errors_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for src, needles in (("hf:Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
                          ("hf:Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "not in", "HF_HUB_OFFLINE", "download")),
                         ("hf:Wan-AI/Wan2.1-T2V-1.3B-Diffusers@v2", ("@v2", "--revision v2")),
                         ("hf:not a repo", ("hf:ORG/NAME",)), ("hf:a/b@", ("hf:ORG/NAME",))):
        assert cli.run_main(convert_main, ["release", src, "--out", str(tmp_path / "m"), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and all(n in err[0] for n in needles), (src, err)
    assert not (tmp_path / "m").exists()


def test_hub_fetches_only_what_conversion_reads(monkeypatch, tmp_path):
    from huggingface_hub.utils import filter_repo_objects

    from weights_convert import hub

    diffusers_repo = ["README.md", "model_index.json", "assets/demo.gif", "scheduler/scheduler_config.json",
                      "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
                      "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin",
                      "text_encoder/config.json", "text_encoder/model.safetensors.index.json",
                      "text_encoder/model-00001-of-00005.safetensors", "tokenizer/tokenizer.json",
                      "tokenizer/spiece.model", "image_encoder/config.json", "image_encoder/model.safetensors",
                      "image_processor/preprocessor_config.json"]
    original_repo = ["config.json", "diffusion_pytorch_model.safetensors", "Wan2.1_VAE.pth",
                     "models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl/tokenizer.json",
                     "google/umt5-xxl/spiece.model", "examples/i2v_input.JPG", "README.md",
                     "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"]
    keep = set(filter_repo_objects(diffusers_repo + original_repo, allow_patterns=hub.ALLOW_PATTERNS))
    skipped = {"README.md", "assets/demo.gif", "scheduler/scheduler_config.json", "vae/diffusion_pytorch_model.bin",
               "tokenizer/spiece.model", "image_processor/preprocessor_config.json",
               "google/umt5-xxl/spiece.model", "examples/i2v_input.JPG"}
    assert keep == set(diffusers_repo + original_repo) - skipped
    assert hub.parse_source("hf:Wan-AI/Wan2.1-T2V-1.3B-Diffusers@abc") == ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "abc")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert hub.cache_dir() == str(tmp_path / "c")
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "h"))
    assert hub.cache_dir() == str(tmp_path / "h" / "hub")
