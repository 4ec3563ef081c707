"""umT5 text encoder, its checkpoint conversion, Wan's text context and the prompt tokenizer.

Oracles: a tiny transformers ``UMT5EncoderModel`` (CPU torch, random weights, larger relative-bias
tables so that the position buckets matter) and tokenizers trained here on a small multi-script
corpus, loaded back through transformers. The original-Wan-layout file is produced with an
inverse renaming written here, independently of ``weights_convert.umt5.UMT5_RULES``.
"""
import json
import os

import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from gvc_jax.models.checkpoint import CheckpointError  # noqa: E402
from gvc_jax.models.tokenizer import TextTokenizer, clean_prompt  # noqa: E402
from gvc_jax.models.umt5 import (  # noqa: E402
    UMT5_XXL,
    UMT5Config,
    hf_key_to_path,
    relative_position_bucket,
    text_context,
)
from weights_convert.sources import in_memory_source, read_checkpoint  # noqa: E402
from weights_convert.umt5 import (  # noqa: E402
    convert_umt5,
    expected_keys,
    load_umt5,
    read_umt5_hf,
    read_umt5_original,
    umt5_factory,
)

VOCAB = 384  # >= every id of the tokenizers built below (trained pieces + 256 byte pieces)
TINY = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            relative_attention_num_buckets=32, relative_attention_max_distance=128,
            feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6)
L = 150  # > max_distance / 2: exercises the log-spaced and the clamped buckets

CORPUS = [
    "A cat walks on the grass in the morning light.", "The quick brown fox jumps over the lazy dog!",
    "一只猫在草地上散步，阳光明媚。", "城市的夜景非常美丽", "Кошка гуляет по траве утром.",
    "Быстрая коричневая лиса прыгает", "Émile a visité Zürich et São Paulo.", "🎉 party time 🐱🌸",
    "numbers 12345 and symbols #@&*",
] * 4
PROMPTS = [
    "A cat walks on the grass", "一只猫在草地上散步", "Кошка гуляет по траве", "🎉 party 🐱 with 🦄 unicorns",
    "  extra   spaces,\ttabs\nand newlines  ", "", "Émile à Zürich", "mixed 城市 и кошка 🌸!",
    "the lazy dog " * 200,  # > 512 tokens: truncated, EOS kept
]


# ----------------------------------------------------------------------------- fixtures

def _to_original(sd: dict) -> dict:
    """transformers UMT5EncoderModel state dict -> Wan's ``wan/modules/t5.py`` names (inverse map)."""
    ffn = {"wi_0": "gate.0", "wi_1": "fc1", "wo": "fc2"}
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        if k == "shared.weight":
            out["token_embedding.weight"] = v
        elif k == "encoder.embed_tokens.weight":
            continue  # tied copy
        elif k == "encoder.final_layer_norm.weight":
            out["norm.weight"] = v
        elif p[:2] == ["encoder", "block"]:
            i, sub = p[2], ".".join(p[4:])
            name = {"0.layer_norm.weight": "norm1.weight", "1.layer_norm.weight": "norm2.weight",
                    "0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight"}.get(sub)
            if name is None and p[5] == "SelfAttention":
                name = f"attn.{p[6]}.weight"
            if name is None and p[5] == "DenseReluDense":
                name = f"ffn.{ffn[p[6]]}.weight"
            out[f"blocks.{i}.{name}"] = v
        else:
            raise AssertionError(f"unexpected key {k}")
    return out


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """(text_encoder dir, torch model, state dict as numpy)."""
    torch.manual_seed(0)
    model = transformers.UMT5EncoderModel(transformers.UMT5Config(**TINY)).eval()
    with torch.no_grad():
        for blk in model.encoder.block:
            blk.layer[0].SelfAttention.relative_attention_bias.weight.normal_(0.0, 2.0)
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.uniform_(0.5, 1.5)
    d = str(tmp_path_factory.mktemp("umt5") / "text_encoder")
    model.save_pretrained(d)
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return d, model, sd


def _ids(seed=1, batch=2, length=L):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 97:] = 0
    return ids, mask


def _ref(model, ids, mask=None):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state.float().numpy()


@pytest.fixture(scope="module")
def encoder(hf):
    d, _, _ = hf
    cfg, src = read_umt5_hf(d)
    return load_umt5(src, cfg)


def _train_tokenizer(byte_fallback: bool, normalize: bool):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    if normalize:
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    spec = json.loads(tok.to_str())
    if byte_fallback:  # umT5's sentencepiece model has byte pieces and byte fallback
        spec["model"]["vocab"] += [[f"<0x{i:02X}>", -20.0] for i in range(256)]
        spec["model"]["byte_fallback"] = True
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    assert tok.get_vocab_size() <= VOCAB
    return tok


@pytest.fixture(scope="module")
def tok_dirs(tmp_path_factory):
    """{"t5": T5TokenizerFast dir (no byte fallback), "file": generic fast tokenizer dir (byte fallback,
    NFKC normalizer): the tokenizer.json as-is}."""
    root = tmp_path_factory.mktemp("tok")
    kw = dict(eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    dirs = {"t5": str(root / "t5"), "file": str(root / "file")}
    transformers.T5TokenizerFast(tokenizer_object=_train_tokenizer(False, False), extra_ids=0,
                                 **kw).save_pretrained(dirs["t5"])
    transformers.PreTrainedTokenizerFast(tokenizer_object=_train_tokenizer(True, True),
                                         **kw).save_pretrained(dirs["file"])
    return dirs


# ----------------------------------------------------------------------------- model parity

def test_relative_position_bucket_matches_transformers(hf):
    _, model, _ = hf
    att = model.encoder.block[0].layer[0].SelfAttention
    rel = torch.arange(-3000, 3001)
    try:
        for nb, md in [(32, 128), (16, 20), (64, 300), (8, 8)]:
            att.relative_attention_num_buckets, att.relative_attention_max_distance = nb, md
            want = att._relative_position_bucket(rel).numpy()
            got = relative_position_bucket(rel.numpy(), nb, md)
            np.testing.assert_array_equal(got, want, err_msg=f"buckets={nb} max_distance={md}")
    finally:
        att.relative_attention_num_buckets, att.relative_attention_max_distance = 32, 128


def test_parity_hf_layout(hf, encoder):
    _, model, _ = hf
    ids, mask = _ids()
    out_m = np.asarray(encoder(ids.numpy(), mask.numpy()))
    out_u = np.asarray(encoder(ids.numpy()))
    assert out_m.shape == (2, L, 32) and out_m.dtype == np.float32
    np.testing.assert_allclose(out_m, _ref(model, ids, mask), rtol=0, atol=1e-5)
    np.testing.assert_allclose(out_u, _ref(model, ids), rtol=0, atol=1e-5)
    # The padded row's valid tokens equal the encoding of those tokens alone.
    alone = np.asarray(encoder(ids[1:, :97].numpy()))[0]
    np.testing.assert_allclose(out_m[1, :97], alone, rtol=0, atol=1e-5)
    assert np.abs(out_m[1, :97] - out_u[1, :97]).max() > 1e-3  # the mask does something


def test_parity_original_layout(hf, tmp_path):
    _, model, sd = hf
    path = str(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    torch.save({k: torch.from_numpy(v) for k, v in _to_original(sd).items()}, path)
    cfg = UMT5Config.from_hf(json.load(open(os.path.join(hf[0], "config.json"))))
    ids, mask = _ids(seed=2)
    ref = _ref(model, ids, mask)
    graphdef, _, rest = nnx.split(nnx.eval_shape(umt5_factory(cfg)), nnx.Param, ...)
    for state in (convert_umt5(read_checkpoint(path), cfg, layout="original"),
                  convert_umt5(read_umt5_original(path, cfg), cfg, layout="hf")):
        enc = nnx.merge(graphdef, state, rest)
        np.testing.assert_allclose(np.asarray(enc(ids.numpy(), mask.numpy())), ref, rtol=0, atol=1e-5)


def test_bf16_conversion(hf, tmp_path):
    _, model, sd = hf
    path = str(tmp_path / "enc-bf16.pth")
    torch.save({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in _to_original(sd).items()}, path)
    src = read_checkpoint(path)
    assert {t.dtype for t in src.values()} == {"bfloat16"}
    cfg = UMT5Config.from_hf(json.load(open(os.path.join(hf[0], "config.json"))),
                             param_dtype="bfloat16", dtype="bfloat16")
    enc = load_umt5(src, cfg, layout="original")
    assert {str(v.dtype) for _, v in nnx.state(enc, nnx.Param).flat_state()} == {"bfloat16"}
    ids, mask = _ids(seed=3)
    out = np.asarray(enc(ids.numpy(), mask.numpy()))
    ref = _ref(model, ids, mask)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    err = np.abs(out - ref)
    assert err.max() < 0.15 * np.abs(ref).max() and err.mean() < 0.03 * np.abs(ref).mean() + 1e-3, err.max()


# ----------------------------------------------------------------------------- strict conversion

def test_conversion_is_strict(hf):
    d, _, sd = hf
    cfg, _ = read_umt5_hf(d)
    base = dict(sd)
    k_miss = "encoder.block.1.layer.1.DenseReluDense.wo.weight"
    k_shape = "encoder.block.0.layer.0.SelfAttention.k.weight"
    k_extra = "encoder.block.0.layer.0.SelfAttention.q.bias"
    cases = {
        k_miss: {k: v for k, v in base.items() if k != k_miss},
        k_extra: {**base, k_extra: np.zeros(32, np.float32)},
        k_shape: {**base, k_shape: base[k_shape][:, :16]},
        "lm_head.weight": {**base, "lm_head.weight": base["shared.weight"]},
    }
    for key, tensors in cases.items():
        with pytest.raises(CheckpointError) as e:
            convert_umt5(in_memory_source(tensors), cfg)
        assert repr(key) in str(e.value), str(e.value)
    # Relative-bias tables are not transposed: a [heads, buckets] table is rejected.
    rb = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"
    with pytest.raises(CheckpointError, match="relative_attention_bias"):
        convert_umt5(in_memory_source({**base, rb: base[rb].T.copy()}), cfg)
    # Original layout: an unknown key and a missing block key are named.
    orig = _to_original(sd)
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.q\.bias"):
        convert_umt5(in_memory_source({**orig, "blocks.0.attn.q.bias": np.zeros(32, np.float32)}), cfg,
                     layout="original")
    with pytest.raises(CheckpointError, match=r"missing source key 'blocks\.1\.attn\.v\.weight'"):
        convert_umt5(in_memory_source({k: v for k, v in orig.items() if k != "blocks.1.attn.v.weight"}), cfg,
                     layout="original")
    with pytest.raises(ValueError, match="layout"):
        convert_umt5(in_memory_source(base), cfg, layout="diffusers")


def test_tied_embedding_either_or_both(hf, encoder):
    d, _, sd = hf
    cfg, _ = read_umt5_hf(d)
    ids, mask = _ids(seed=4, length=20)
    want = np.asarray(encoder(ids.numpy(), mask.numpy()))
    graphdef, _, rest = nnx.split(nnx.eval_shape(umt5_factory(cfg)), nnx.Param, ...)
    for drop in ("shared.weight", "encoder.embed_tokens.weight", None):
        tensors = {k: v for k, v in sd.items() if k != drop}
        enc = nnx.merge(graphdef, convert_umt5(in_memory_source(tensors), cfg), rest)
        np.testing.assert_array_equal(np.asarray(enc(ids.numpy(), mask.numpy())), want)


def test_expected_keys_cover_the_model(hf):
    d, _, sd = hf
    cfg, _ = read_umt5_hf(d)
    hf_keys = expected_keys(cfg, "hf")
    assert set(hf_keys) == set(sd) - {"encoder.embed_tokens.weight"}
    assert set(expected_keys(cfg, "original")) == set(_to_original(sd))
    params = {"/".join(map(str, p)) for p, _ in nnx.state(nnx.eval_shape(umt5_factory(cfg)), nnx.Param).flat_state()}
    assert set(hf_keys.values()) == params


def test_hf_key_to_path():
    assert hf_key_to_path("encoder.block.3.layer.1.DenseReluDense.wi_0.weight") == (
        "encoder", "block", 3, "layer", 1, "DenseReluDense", "wi_0", "kernel")
    assert hf_key_to_path("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")[-2:] == (
        "relative_attention_bias", "embedding")
    assert hf_key_to_path("encoder.block.2.layer.1.layer_norm.weight")[-2:] == ("layer_norm", "scale")
    assert hf_key_to_path("encoder.embed_tokens.weight") == hf_key_to_path("shared.weight") == ("shared", "embedding")
    for bad in ("lm_head.weight", "encoder.block.0.layer.0.SelfAttention.q.bias", "decoder.block.0.layer.0.x.weight",
                "encoder.block.0.layer.2.layer_norm.weight"):
        with pytest.raises(KeyError):
            hf_key_to_path(bad)


# ----------------------------------------------------------------------------- config

def test_config(hf):
    d, _, _ = hf
    raw = json.load(open(os.path.join(d, "config.json")))
    cfg = UMT5Config.from_hf(raw, dtype="bfloat16")
    assert (cfg.vocab_size, cfg.d_model, cfg.d_kv, cfg.d_ff, cfg.num_layers, cfg.num_heads) == (VOCAB, 32, 8, 64, 2, 4)
    assert cfg.dtype == "bfloat16" and cfg.param_dtype == "float32" and cfg.text_len == 512
    assert UMT5Config(**cfg.to_dict()) == cfg
    for bad, match in [({"feed_forward_proj": "relu"}, "feed_forward_proj"),
                       ({"feed_forward_proj": "gated-silu"}, "feed_forward_proj"),
                       ({"is_gated_act": False}, "is_gated_act"),
                       ({"model_type": "t5"}, "model_type")]:
        with pytest.raises(ValueError, match=match):
            UMT5Config.from_hf({**raw, **bad})
    with pytest.raises(ValueError, match="unknown"):
        UMT5Config.from_hf(raw, not_a_field=1)
    xxl = UMT5_XXL
    assert (xxl.d_model, xxl.num_layers, xxl.num_heads, xxl.d_kv, xxl.d_ff, xxl.vocab_size) == (
        4096, 24, 64, 64, 10240, 256384)
    assert (xxl.relative_attention_num_buckets, xxl.relative_attention_max_distance, xxl.dense_act_fn) == (
        32, 128, "gelu_new")


# ----------------------------------------------------------------------------- tokenizer

def test_clean_prompt():
    assert clean_prompt("  a   cat\t\twalks\n\non  grass  ") == "a cat walks on grass"
    assert clean_prompt("&amp;lt;b&amp;gt; &quot;x&quot;") == '<b> "x"'  # html.unescape twice
    assert clean_prompt("\u3000城市\u00a0夜景 ") == "城市 夜景"
    assert clean_prompt("") == ""
    with pytest.raises(TypeError):
        clean_prompt(None)


def test_tokenizer_matches_transformers_t5(tok_dirs):
    """The brief's flow: a T5TokenizerFast saved with save_pretrained, reloaded by AutoTokenizer."""
    d = tok_dirs["t5"]
    ref = transformers.AutoTokenizer.from_pretrained(d)
    tt = TextTokenizer.from_file(os.path.join(d, "tokenizer.json"))
    for p in PROMPTS:
        want = ref(clean_prompt(p), truncation=True, max_length=512, add_special_tokens=True)["input_ids"]
        assert tt.encode(p) == want, p[:40]
        assert want[-1] == ref.eos_token_id == 1
    long = tt.encode(PROMPTS[-1])
    assert len(long) == 512 and long[-1] == 1
    assert tt.encode("") == [1]


def test_tokenizer_matches_file_as_is(tok_dirs):
    """Byte fallback, a normalizer and literal special tokens: the tokenizer.json pipeline as-is (what
    transformers' fast tokenizer does when it loads the file without rebuilding it)."""
    d = tok_dirs["file"]
    ref = transformers.AutoTokenizer.from_pretrained(d)
    tt = TextTokenizer.from_file(d)  # directory accepted
    extra = ["Ｆｕｌｌ ｗｉｄｔｈ", "e\u0301te\u0301 🦄", "a </s> b", "&amp;lt;b&amp;gt;", "ℌ𝔢𝔩𝔩𝔬 ☃ ﷺ"]
    byte_ids = {ref.convert_tokens_to_ids(f"<0x{i:02X}>") for i in range(256)}
    saw_bytes = False
    for p in PROMPTS + extra:
        want = ref(clean_prompt(p), truncation=True, max_length=512, add_special_tokens=True)["input_ids"]
        got = tt.encode(p)
        assert got == want, p[:40]
        saw_bytes |= bool(byte_ids & set(got))
    assert saw_bytes  # the emoji outside the corpus went through byte fallback
    tt8 = TextTokenizer.from_file(d, max_length=8)
    assert tt8.encode(PROMPTS[-1]) == ref(clean_prompt(PROMPTS[-1]), truncation=True, max_length=8)["input_ids"]


def test_tokenizer_file_errors(tmp_path):
    missing = str(tmp_path / "nope" / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="nope"):
        TextTokenizer.from_file(missing)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=str(bad)):
        TextTokenizer.from_file(str(bad))
    bad.write_text(json.dumps({"version": "1.0", "model": {"type": "Nope"}}))
    with pytest.raises(ValueError, match=str(bad)):
        TextTokenizer.from_file(str(tmp_path))


# ----------------------------------------------------------------------------- text context

def test_text_context(hf, encoder, tok_dirs):
    _, model, _ = hf
    d = tok_dirs["file"]
    tt = TextTokenizer.from_file(d)
    ref_tok = transformers.AutoTokenizer.from_pretrained(d)
    for p in ["A cat walks on the grass 🦄", "  一只猫  в траве ", ""]:
        ctx = text_context(encoder, tt, p)
        ids = ref_tok(clean_prompt(p), truncation=True, max_length=512)["input_ids"]
        n = len(ids)
        assert ctx.shape == (512, 32) and ctx.dtype == np.float32
        assert not ctx[n:].any()
        assert np.abs(ctx[:n]).min(axis=1).max() > 0 and (np.abs(ctx[:n]).max(axis=1) > 0).all()
        want = _ref(model, torch.tensor([ids]))[0]
        np.testing.assert_allclose(ctx[:n], want, rtol=0, atol=1e-5)
