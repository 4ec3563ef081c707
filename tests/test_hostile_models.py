"""Hostile model directories and converter inputs: each gives one CheckpointError line (``error:`` and
exit status 2 on the command line) in bounded time and memory, before any large allocation, and
changes no file.

A tiny model directory (the ``tiny-t2v`` DiT and VAE, the DiT in 3 parts, a tiny umT5 text
encoder, a tokenizer and ``context.npy``) is written once with ``ModelWriter``; each case copies
it, breaks one thing and hashes the copy before and after. FIFO cases arm a watchdog that opens
the FIFO's write end after a while, so a regression that blocks on it fails on time instead of
hanging the suite.
"""
import hashlib
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import run_within
from flax import nnx

from gvc_jax import cli
from gvc_jax import encode as encode_cli
from gvc_jax.io.video_writer import write_video
from gvc_jax.models.checkpoint import (
    MAX_MANIFEST_BYTES,
    CheckpointError,
    load_model,
    path_str,
    read_context,
)
from gvc_jax.models.configs import DIT_LIMITS, PRESETS, DiTConfig, ModelConfig, VAEConfig, get_preset
from weights_convert.model_writer import ModelWriter

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["--steps", "2", "--tail", "1", "-K", "256", "-M", "2", "--gop-frames", "5", "--max-frames", "5",
        "--resize", "32x32", "--quiet"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"
BOUND_S = 120  # hang guards of in-process checks (they take well under a second): not timings
TIMEOUT_S = 300  # hang guards of subprocesses (they take seconds; JAX's import crawls on a loaded machine)
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
needs_dev_zero = pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")


# ----------------------------------------------------------------------------- helpers

def tiny_tokenizer(path):
    """A T5-style Unigram tokenizer (pad 0, EOS 1, unk 2) over letters and a few words."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(c, -3.0) for c in LETTERS] + [("\u2581" + w, -1.0) for w in ("a", "cat", "the")]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(path))
    return len(vocab)


def _parts(state, n):
    """``state``'s leaves in sorted path order, as ``n`` States (ModelWriter writes them as parts)."""
    flat = sorted(state.flat_state(), key=lambda kv: path_str(kv[0]))
    size = -(-len(flat) // n)
    for i in range(0, len(flat), size):
        yield nnx.State.from_flat_path(dict(flat[i:i + size]))


def tree_digest(root) -> dict:
    """{relative path: digest} of everything under ``root``, reading only regular files (a FIFO or
    a device is recorded by its kind, a symlink by its target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
            else:
                out[rel] = f"mode:{stat.S_IFMT(st.st_mode)}"
    return out


def copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_manifest(model_dir, edit):
    p = model_dir / "gvc_model.json"
    m = json.loads(p.read_text())
    edit(m)
    p.write_text(json.dumps(m))


class FifoWatchdog:
    """A hang guard: opens the write end of ``fifo`` every second after ``after`` seconds (10x and
    more what the checks need), so that a reader blocked on it wakes, and says so: the test fails
    (``blocked``) instead of hanging."""

    def __init__(self, fifo, after=BOUND_S):
        self.fifo, self.after, self.stop = str(fifo), after, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.blocked = False

    def _run(self):
        if self.stop.wait(self.after):
            return
        while not self.stop.is_set():
            try:
                os.close(os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK))
                self.blocked = True  # a reader was still waiting on the FIFO
            except OSError:
                pass
            self.stop.wait(1.0)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        assert not self.blocked, f"a reader blocked on the FIFO {self.fifo} for {self.after} s"
        return False


def expect_load_error(model_dir, pattern=None, **kw):
    """load_model(model_dir) raises one CheckpointError line matching ``pattern``, quickly, and
    leaves every file as it was. Returns the message."""
    before = tree_digest(model_dir)
    with pytest.raises(CheckpointError, match=pattern) as e:
        run_within(BOUND_S, load_model, str(model_dir), **kw)  # a hang guard, not a timing
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert tree_digest(model_dir) == before
    return msg


def run_cli(args, cwd, env_extra=None, timeout=TIMEOUT_S, module="gvc_jax.encode"):
    """``python -m module args`` with a timeout and an 8 GB address-space cap (so a regression that
    reads without end fails instead of eating the machine's memory)."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO, **(env_extra or {})}
    cmd = [sys.executable, "-m", module, *args]
    if os.name == "posix" and shutil.which("sh"):  # ulimit in a shell: no preexec_fn (fork) from a JAX process
        cmd = ["sh", "-c", 'ulimit -v 8388608 2>/dev/null; exec "$0" "$@"', *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(cwd), timeout=timeout)  # a hang guard


def assert_one_line_error(r, needle):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "WARNING" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    assert needle in lines[0], lines[0]
    assert "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny model directory with a text encoder, the DiT in 3 parts, and a 5-frame 32x32 clip."""
    from gvc_jax.models.dit import WanDiT
    from gvc_jax.models.umt5 import UMT5Config, UMT5Encoder
    from gvc_jax.models.vae import WanVAE

    root = tmp_path_factory.mktemp("hostile")
    cfg = get_preset("tiny-t2v")
    n_vocab = tiny_tokenizer(root / "tokenizer.json")
    t5 = UMT5Config(vocab_size=n_vocab + 4, d_model=cfg.dit.text_dim, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                    text_len=cfg.dit.text_len)
    model = root / "model"
    with ModelWriter(str(model)) as w:
        w.add("dit", _parts(nnx.state(WanDiT(cfg.dit, rngs=nnx.Rngs(0)), nnx.Param), 3))
        w.add("vae", nnx.state(WanVAE(cfg.vae, rngs=nnx.Rngs(1)), nnx.Param))
        w.add("text_encoder", nnx.state(UMT5Encoder(t5, rngs=nnx.Rngs(2)), nnx.Param), t5.to_dict())
        buf = io.BytesIO()
        np.save(buf, np.random.default_rng(0).standard_normal((1, cfg.dit.text_dim)).astype(np.float32))
        w.add_file("context.npy", buf.getvalue())
        w.add_file("tokenizer.json", (root / "tokenizer.json").read_bytes())
        w.commit(ModelConfig("tiny-hostile", cfg.dit, cfg.vae))
    rng = np.random.default_rng(1)
    frames = np.clip(rng.integers(0, 200, (1, 32, 32, 3)) + 9 * np.arange(5)[:, None, None, None], 0, 255)
    clip = root / "in.npy"
    write_video(str(clip), frames.astype(np.uint8), 16.0)
    return {"model": model, "clip": clip, "root": root}


def test_base_model_loads(base):
    m = load_model(str(base["model"]))
    assert json.loads((base["model"] / "gvc_model.json").read_text())["parts"]["dit"] == 3
    assert m.context.shape == (1, 32) and m.context.dtype == np.float32 and m.text_encoder


# ----------------------------------------------------------------------------- config ranges

def test_every_wan_release_config_is_admitted():
    for name, cfg in PRESETS.items():
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.dit.__dict__.items()}
        assert DiTConfig(**d) == cfg.dit, name
    big = PRESETS["wan2.1-flf2v-14b-720p"].dit
    assert (big.dim, big.num_layers, big.ffn_dim, big.text_len, big.text_dim) == (5120, 40, 13824, 512, 4096)
    # about 4x headroom over the 14B models on every size
    DiTConfig(num_attention_heads=160, attention_head_dim=128, num_layers=160, ffn_dim=4 * 13824, text_len=2048,
              text_dim=16384, in_channels=4 * 36, image_dim=4 * 1280, added_kv_proj_dim=20480,
              pos_embed_seq_len=4 * 514)
    VAEConfig(base_dim=4 * 96)


@pytest.mark.parametrize("field,value,needle", [
    ("num_layers", 1e6, "num_layers must be an integer"),
    ("num_layers", 10 ** 6, "num_layers must be in [1, 160]"),
    ("num_layers", True, "num_layers must be an integer"),
    ("num_layers", "30", "num_layers must be an integer"),
    ("text_len", 1e9, "text_len must be an integer"),
    ("text_len", 10 ** 9, "text_len must be in"),
    ("num_attention_heads", 0, "num_attention_heads must be in"),
    ("ffn_dim", -1, "ffn_dim must be in"),
    ("attention_head_dim", 15, "attention_head_dim must be even"),
    ("patch_size", [1, 2, 2, 2], "patch_size must have 3 entries"),
    ("patch_size", [1, 2.0, 2], "patch_size[1] must be an integer"),
    ("eps", "1e-6", "eps must be a finite number"),
    ("eps", float("nan"), "eps must be a finite number"),
    ("cross_attn_norm", 1, "cross_attn_norm must be true or false"),
    ("image_dim", 1e9, "image_dim must be an integer"),
    ("dtype", "float64", "dtype must be one of"),
    ("qk_norm", "x" * 10 ** 6, "qk_norm must be a string"),
])
def test_dit_config_fields_are_typed_and_bounded(base, tmp_path, field, value, needle):
    d = copy_model(base["model"], tmp_path / "m")
    edit_manifest(d, lambda m: m["dit"].__setitem__(field, value))
    msg = expect_load_error(d, "bad dit config")
    assert needle in msg and str(d) in msg and f"DiTConfig.{field}" in msg


@pytest.mark.parametrize("field,value,needle", [
    ("base_dim", 1e6, "base_dim must be an integer"),
    ("dim_mult", [1] * 1000, "dim_mult must have 1 to 6 entries"),
    ("dim_mult", [1, 2, 4, 10 ** 9], "dim_mult[3] must be in"),
    ("z_dim", 10 ** 9, "z_dim must be in"),
    ("latents_std", [0.0] * 4, "latents_std[0] must be in (0"),
    ("latents_mean", [0.0] * 3, "latents_mean must have 4 entries"),
    ("temperal_downsample", [False, True, 1], "temperal_downsample[2] must be true or false"),
])
def test_vae_config_fields_are_typed_and_bounded(base, tmp_path, field, value, needle):
    d = copy_model(base["model"], tmp_path / "m")
    edit_manifest(d, lambda m: m["vae"].__setitem__(field, value))
    msg = expect_load_error(d, "bad vae config")
    assert needle in msg and str(d) in msg


@pytest.mark.parametrize("edit,needle", [
    (lambda m: m["parts"].__setitem__("dit", 10 ** 9), "parts.dit must be in [1, 100000]"),
    (lambda m: m["parts"].__setitem__("dit", 1e9), "parts.dit must be an integer"),
    (lambda m: m["parts"].__setitem__("dit", 0), "parts.dit must be in"),
    (lambda m: m["parts"].__setitem__("dit", 99_999), "more than the"),
    (lambda m: m["parts"].__setitem__("dit", 5), "part-003 is missing (2 of 5 parts"),
    (lambda m: m["parts"].__setitem__("text_encoder", 2), "only dit, vae may be in parts"),
    (lambda m: m.__setitem__("parts", [3]), "field 'parts' must be an object"),
    (lambda m: m.__setitem__("name", "n" * 100_000), "manifest.name must be a string"),
    (lambda m: m.__setitem__("name", 7), "manifest.name must be a string"),
    (lambda m: m.__setitem__("fingerprint", None), "field 'fingerprint' must be 64"),
    (lambda m: m.__setitem__("default_shift", 1e300), "default_shift must be in"),
    (lambda m: m["encoders"]["text_encoder"]["config"].__setitem__("d_model", 1e9),
     "encoders.text_encoder.config.d_model must be an integer"),
    (lambda m: m["encoders"]["text_encoder"]["config"].__setitem__("vocab_size", 10 ** 12),
     "vocab_size must be in"),
    (lambda m: m.__setitem__("encoders", {"audio_encoder": {}}), "bad encoders entry"),
])
def test_manifest_fields_are_typed_and_bounded(base, tmp_path, edit, needle):
    d = copy_model(base["model"], tmp_path / "m")
    edit_manifest(d, edit)
    msg = expect_load_error(d, None)
    assert needle in msg and str(d) in msg


def test_oversized_and_deep_manifests(base, tmp_path):
    d = copy_model(base["model"], tmp_path / "big")
    with open(d / "gvc_model.json", "ab") as f:
        f.write(b" " * (MAX_MANIFEST_BYTES + 1))
    expect_load_error(d, "more than the")
    d = copy_model(base["model"], tmp_path / "deep")
    (d / "gvc_model.json").write_text("[" * 200_000 + "]" * 200_000)
    expect_load_error(d, "is corrupt")


def test_unsupported_but_in_range_dit_is_one_line(base, tmp_path):
    d = copy_model(base["model"], tmp_path / "m")
    edit_manifest(d, lambda m: m["dit"].__setitem__("patch_size", [1, 4, 4]))
    expect_load_error(d, r"unsupported dit config: only patch_size \(1, 2, 2\)")


# ----------------------------------------------------------------------------- context.npy

def _npy_header(shape, descr="<f4", version=(1, 0)):
    buf = io.BytesIO()
    write = np.lib.format.write_array_header_1_0 if version == (1, 0) else np.lib.format.write_array_header_2_0
    write(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@pytest.mark.parametrize("content,needle", [
    (lambda: _npy_header((10 ** 12, 32)), "has shape (1000000000000, 32), expected [n <= 512, 32]"),
    (lambda: _npy_header((2 ** 62, 2 ** 62)), "has shape"),
    (lambda: _npy_header((1, 32), version=(2, 0)) + b"\0" * 128, None),  # valid, version 2.0
    (lambda: _npy_header((1, 31)) + b"\0" * 124, "expected [n <= 512, 32]"),
    (lambda: _npy_header((1, 32), "<f8") + b"\0" * 256, "holds float64, expected float32"),
    (lambda: _npy_header((1, 32), "|O") + b"\0" * 256, "expected float32"),
    (lambda: _npy_header((1, 32)) + b"\0" * 100, "its header implies"),
    (lambda: _npy_header((1, 32)) + b"\0" * 129, "its header implies"),
    (lambda: b"\x93NUMPY\x01\x00" + struct.pack("<H", 9000) + b"{" * 9000, "not a valid .npy file"),
    (lambda: b"not an npy file at all", "not a valid .npy file"),
    (lambda: b"\0" * (65536 + 512 * 32 * 4 + 1), "more than the"),
])
def test_context_npy_header_is_checked_before_reading(base, tmp_path, content, needle):
    d = copy_model(base["model"], tmp_path / "m")
    data = content()
    (d / "context.npy").write_bytes(data)
    if needle is None:  # well-formed: only the sha256 of the manifest refuses it
        expect_load_error(d, "does not match its sha256")
        edit_manifest(d, lambda m: m.pop("context_sha256"))
        assert load_model(str(d)).context.shape == (1, 32)
        return
    msg = expect_load_error(d, None)
    assert needle in msg and str(d / "context.npy") in msg


def test_context_npy_big_endian_and_missing(base, tmp_path):
    cfg = get_preset("tiny-t2v").dit
    d = tmp_path / "ctx"
    d.mkdir()
    rows = np.arange(64, dtype=">f4").reshape(2, 32)
    np.save(d / "context.npy", rows)
    got = read_context(str(d), cfg)
    assert got.dtype == np.float32 and np.array_equal(got, rows.astype(np.float32))
    assert read_context(str(tmp_path), cfg) is None
    with pytest.raises(CheckpointError, match="is missing"):
        read_context(str(tmp_path), cfg, "0" * 64)


@needs_dev_zero
def test_context_npy_symlink_to_dev_zero(base, tmp_path):
    d = copy_model(base["model"], tmp_path / "m")
    os.remove(d / "context.npy")
    os.symlink("/dev/zero", d / "context.npy")
    expect_load_error(d, "context.npy is a character device, not a regular file")


@needs_dev_zero
def test_dev_zero_context_through_the_cli(base, tmp_path):
    d = copy_model(base["model"], tmp_path / "m")
    os.remove(d / "context.npy")
    os.symlink("/dev/zero", d / "context.npy")
    before = tree_digest(d)
    r = run_cli([str(base["clip"]), "-o", str(tmp_path / "o.gvc"), "--model", str(d), *FAST], tmp_path)
    assert_one_line_error(r, "character device")
    assert tree_digest(d) == before and not (tmp_path / "o.gvc").exists()


# ----------------------------------------------------------------------------- FIFOs and devices

@needs_fifo
@pytest.mark.parametrize("where,needle", [
    ("context.npy", "is a FIFO"),
    ("gvc_model.json", "is a FIFO"),
    ("dit/part-001/_CHECKPOINT_METADATA", "is a FIFO"),
    ("vae/manifest.ocdbt", "is a FIFO"),
])
def test_fifo_in_place_of_a_model_file(base, tmp_path, where, needle):
    d = copy_model(base["model"], tmp_path / "m")
    target = d / where
    assert target.is_file(), where
    os.remove(target)
    os.mkfifo(target)
    with FifoWatchdog(target):
        msg = expect_load_error(d, needle)
    assert str(target) in msg


@needs_fifo
def test_symlink_to_a_fifo_inside_a_checkpoint(base, tmp_path):
    d = copy_model(base["model"], tmp_path / "m")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    target = d / "vae" / "_CHECKPOINT_METADATA"
    os.remove(target)
    os.symlink(fifo, target)
    with FifoWatchdog(fifo):
        expect_load_error(d, "is a FIFO")


@needs_fifo
def test_fifo_manifest_through_the_cli(base, tmp_path):
    d = copy_model(base["model"], tmp_path / "m")
    os.remove(d / "gvc_model.json")
    os.mkfifo(d / "gvc_model.json")
    with FifoWatchdog(d / "gvc_model.json", after=TIMEOUT_S / 2):
        r = run_cli([str(base["clip"]), "-o", str(tmp_path / "o.gvc"), "--model", str(d), *FAST], tmp_path)
    assert_one_line_error(r, "gvc_model.json is a FIFO")


@needs_fifo
def test_fifo_tokenizer_is_refused_when_prompting(base, tmp_path):
    from gvc_jax.models.checkpoint import load_text_encoder

    d = copy_model(base["model"], tmp_path / "m")
    os.remove(d / "tokenizer.json")
    os.mkfifo(d / "tokenizer.json")
    m = load_model(str(d))  # the text encoder is only read for a prompt
    with FifoWatchdog(d / "tokenizer.json"), pytest.raises(CheckpointError, match="tokenizer .* is a FIFO"):
        load_text_encoder(m.path, m.text_encoder)


def test_symlink_loop_in_a_checkpoint(base, tmp_path):
    d = copy_model(base["model"], tmp_path / "m")
    os.symlink(".", d / "vae" / "loop")
    expect_load_error(d, "symlink loop")


def test_num_layers_1e6_through_the_cli(base, tmp_path):
    d = copy_model(base["model"], tmp_path / "m")
    edit_manifest(d, lambda m: m["dit"].__setitem__("num_layers", 1e6))
    before = tree_digest(d)
    r = run_cli([str(base["clip"]), "-o", str(tmp_path / "o.gvc"), "--model", str(d), *FAST], tmp_path)
    assert_one_line_error(r, "DiTConfig.num_layers must be an integer in [1, 160], got 1000000.0 (float)")
    assert str(d) in r.stderr and tree_digest(d) == before


# ----------------------------------------------------------------------------- relative --model

def test_relative_and_absolute_model_with_prompt_give_the_same_stream(base, tmp_path, monkeypatch):
    """Known bug: a relative --model with --prompt failed reading the text encoder (orbax needs an
    absolute path). Relative (a fresh process, its own prompt cache) and absolute (in process, its
    own cache) now write the same bytes."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(base["model"], work / "models" / "tiny")
    before = tree_digest(work / "models")
    rel_out = work / "rel.gvc"
    r = run_cli([str(base["clip"]), "-o", "rel.gvc", "--model", os.path.join("models", "tiny"),
                 "--prompt", "a cat", *FAST], work, {"GVC_JAX_CACHE": str(tmp_path / "cache-rel")})
    assert r.returncode == 0, r.stderr[-3000:]
    monkeypatch.setenv("GVC_JAX_CACHE", str(tmp_path / "cache-abs"))
    abs_out = tmp_path / "abs.gvc"
    assert cli.run_main(encode_cli.main, [str(base["clip"]), "-o", str(abs_out), "--model",
                                          str(work / "models" / "tiny"), "--prompt", "a cat", *FAST]) == 0
    assert rel_out.read_bytes() == abs_out.read_bytes()
    assert os.listdir(tmp_path / "cache-rel" / "text") and os.listdir(tmp_path / "cache-abs" / "text")
    assert tree_digest(work / "models") == before


def test_relative_paths_in_process(base, tmp_path, monkeypatch):
    from gvc_jax.models.checkpoint import load_text_encoder
    from gvc_jax.models.registry import load_checkpoint

    monkeypatch.chdir(base["model"].parent)
    m = load_checkpoint("model")
    assert m.path == str(base["model"]) and os.path.isabs(m.path)
    monkeypatch.chdir(base["root"].parent)
    encoder, tokenizer = load_text_encoder(os.path.join(base["root"].name, "model"), m.text_encoder)
    assert tokenizer.encode("a cat")[-1] == 1
    assert np.array_equal(m.text_context[:1], load_model(str(base["model"])).context)


# ----------------------------------------------------------------------------- converter inputs

def _safetensors(header, data=b"", raw_header=None):
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


ST_CASES = {
    "list": (_safetensors([]), "the safetensors header is not a JSON object"),
    "number": (_safetensors({"a": 5}), "tensor 'a' is not an object"),
    "null": (_safetensors({"a": None}), "tensor 'a' is not an object"),
    "no_shape": (_safetensors({"a": {"dtype": "F32", "data_offsets": [0, 4]}}, b"\0" * 4), "tensor 'a' has no 'shape'"),
    "no_dtype": (_safetensors({"a": {"shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "tensor 'a' has no 'dtype'"),
    "no_offsets": (_safetensors({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4), "tensor 'a' has no 'data_offsets'"),
    "bad_dtype": (_safetensors({"a": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
                  "tensor 'a' has unsupported dtype 'F33'"),
    "dtype_not_str": (_safetensors({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
                      "unsupported dtype"),
    "negative_dim": (_safetensors({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
                     "tensor 'a': shape must be a list"),
    "float_dim": (_safetensors({"a": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}, b"\0" * 4),
                  "tensor 'a': shape must be a list"),
    "bool_dim": (_safetensors({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4),
                 "tensor 'a': shape must be a list"),
    "shape_dict": (_safetensors({"a": {"dtype": "F32", "shape": {"0": 1}, "data_offsets": [0, 4]}}, b"\0" * 4),
                   "tensor 'a': shape must be a list"),
    "offsets_3": (_safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, b"\0" * 8),
                  "data_offsets must be [begin, end] integers"),
    "offsets_float": (_safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}}, b"\0" * 4),
                      "data_offsets must be [begin, end] integers"),
    "offsets_reversed": (_safetensors({"a": {"dtype": "F32", "shape": [0], "data_offsets": [4, 0]}}, b"\0" * 4),
                         "outside the 4 data bytes"),
    "offsets_negative": (_safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}, b"\0" * 4),
                         "outside the"),
    "offsets_past_end": (_safetensors({"a": {"dtype": "F32", "shape": [2 ** 40], "data_offsets": [0, 2 ** 42]}},
                                      b"\0" * 4), "truncated file?"),
    "size_mismatch": (_safetensors({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8),
                      "needs 8 bytes"),
    "metadata_list": (_safetensors({"__metadata__": ["x"]}), "__metadata__ must be an object of strings"),
    "metadata_int": (_safetensors({"__metadata__": {"format": 1}}), "__metadata__ must be an object of strings"),
    "header_too_long": (struct.pack("<Q", 2 ** 63) + b"{}", "header length"),
    "header_past_eof": (struct.pack("<Q", 1000) + b"{}", "header length 1,000 is more than 2"),
    "short": (b"\x01\x02", "shorter than its 8-byte header length"),
    "not_utf8": (_safetensors(None, raw_header=b"\xff\xfe{}"), "its header is not JSON"),
    "deep": (_safetensors(None, raw_header=b"[" * 100_000 + b"]" * 100_000), "its header is not JSON"),
}


@pytest.mark.parametrize("case", sorted(ST_CASES))
def test_bad_safetensors_headers(tmp_path, case):
    from weights_convert.sources import read_checkpoint

    data, needle = ST_CASES[case]
    f = tmp_path / "dit.safetensors"
    f.write_bytes(data)
    with pytest.raises(CheckpointError) as e:
        run_within(BOUND_S, read_checkpoint, str(f))  # a hang guard, not a timing
    msg = str(e.value)
    assert "\n" not in msg and needle in msg and str(f) in msg, msg
    assert f.read_bytes() == data


def test_good_safetensors_header_is_accepted(tmp_path):
    from weights_convert.sources import read_safetensors

    data = np.arange(6, dtype="<f4").tobytes()
    f = tmp_path / "ok.safetensors"
    f.write_bytes(_safetensors({"__metadata__": {"format": "pt"},
                                "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                                "e": {"dtype": "BF16", "shape": [0, 5], "data_offsets": [24, 24]}}, data))
    src = read_safetensors(str(f))
    assert np.array_equal(src["a"].load(), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert src["e"].load().shape == (0, 5)
    # the file shrinks after its header was read: the tensor read is refused, not padded
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="truncated"):
        src["a"].load()


@pytest.mark.parametrize("case", ["list", "number", "null", "no_shape"])
def test_bad_safetensors_through_the_cli(tmp_path, case):
    data, needle = ST_CASES[case]
    (tmp_path / "dit.safetensors").write_bytes(data)
    r = run_cli(["original", "--dit", "dit.safetensors", "--vae", "vae.pth", "--preset", "tiny-t2v",
                          "--out", "out", "--quiet"], tmp_path, module="weights_convert")
    assert_one_line_error(r, needle)
    assert "dit.safetensors" in r.stderr
    assert sorted(os.listdir(tmp_path)) == ["dit.safetensors"] and (tmp_path / "dit.safetensors").read_bytes() == data


def test_index_json_shards_stay_in_their_directory(tmp_path):
    from weights_convert.sources import read_safetensors

    (tmp_path / "sub").mkdir()
    (tmp_path / "outside.safetensors").write_bytes(_safetensors({}))
    for shard in ("../outside.safetensors", "/etc/passwd", "", 5, "."):
        idx = tmp_path / "sub" / "m.safetensors.index.json"
        idx.write_text(json.dumps({"weight_map": {"a": shard}}))
        with pytest.raises(CheckpointError, match="not a file name in the index's directory"):
            read_safetensors(str(idx))
    idx.write_text(json.dumps({"weight_map": ["a"]}))
    with pytest.raises(CheckpointError, match="'weight_map' is not an object"):
        read_safetensors(str(idx))
    idx.write_text("[]")
    with pytest.raises(CheckpointError, match="is not a JSON object"):
        read_safetensors(str(idx))


@needs_fifo
@pytest.mark.parametrize("name", ["dit.safetensors", "vae.pth", "m.safetensors.index.json"])
def test_converter_refuses_a_fifo(tmp_path, name):
    from weights_convert.sources import read_checkpoint

    fifo = tmp_path / name
    os.mkfifo(fifo)
    with FifoWatchdog(fifo), pytest.raises(CheckpointError, match="is a FIFO, not a regular file"):
        read_checkpoint(str(fifo))


@needs_dev_zero
@pytest.mark.parametrize("name", ["dit.safetensors", "vae.pth"])
def test_converter_refuses_a_symlink_to_dev_zero(tmp_path, name):
    from weights_convert.sources import read_checkpoint

    os.symlink("/dev/zero", tmp_path / name)
    with pytest.raises(CheckpointError, match="is a character device, not a regular file"):
        read_checkpoint(str(tmp_path / name))


def test_original_config_json_is_typed(tmp_path):
    from weights_convert.release import original_dit_config

    good = dict(model_type="t2v", dim=1536, num_heads=12, in_dim=16, out_dim=16, ffn_dim=8960, freq_dim=256,
                num_layers=30, eps=1e-6, text_len=512)
    assert original_dit_config(good) == PRESETS["wan2.1-t2v-1.3b"].dit
    for field, value, needle in [("num_layers", 1e6, "'num_layers' must be an integer"),
                                 ("num_layers", 10 ** 6, "num_layers must be in [1, 160]"),
                                 ("num_heads", 0, "must be positive"), ("dim", True, "'dim' must be an integer"),
                                 ("text_len", 10 ** 9, "text_len must be in")]:
        with pytest.raises(CheckpointError, match="config.json") as e:
            original_dit_config({**good, field: value})
        assert needle in str(e.value), str(e.value)
    assert DIT_LIMITS["num_layers"] == (1, 160)
