"""How the DiT runs (dtype, attention) without changing what the model is: same weights and
fingerprint, bf16 weights where the layout says so, exact round trips, the command-line flags."""
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHORT_SAMPLER as SAMPLER
from flax import nnx

from gvc_jax.codec.session import decode_video, encode_video
from gvc_jax.models.registry import compute_dtype, with_execution


@pytest.fixture(scope="module")
def model(tiny):
    return tiny


def test_auto_dtype_per_backend():
    assert compute_dtype("auto", "cpu") == "float32"
    assert compute_dtype("auto", "gpu") == compute_dtype("auto", "tpu") == "bfloat16"
    assert compute_dtype("float32", "tpu") == "float32"
    with pytest.raises(ValueError):
        compute_dtype("float16")


def test_bf16_model_keeps_weights_identity_and_fp32_islands(model):
    b16 = with_execution(model, dtype="bfloat16", attention="xla")
    assert b16 is not model and model.config.dit.dtype == "float32"  # the original is untouched
    assert b16.fingerprint == model.fingerprint and b16.config.dit.attention == "xla"
    dtypes = {"/".join(map(str, p)): v.dtype for p, v in nnx.state(b16.dit, nnx.Param).flat_state()}
    assert dtypes["blocks/0/attn1/to_q/kernel"] == jnp.bfloat16
    norms = [k for k in dtypes if "norm" in k]
    assert norms and all(dtypes[k] == jnp.float32 for k in norms)  # norms (and modulation) stay fp32
    orig = np.asarray(nnx.state(model.dit, nnx.Param)["blocks"][0]["attn1"]["to_q"]["kernel"][...])
    cast = np.asarray(nnx.state(b16.dit, nnx.Param)["blocks"][0]["attn1"]["to_q"]["kernel"][...], np.float32)
    np.testing.assert_allclose(cast, orig, rtol=1 / 128)
    assert with_execution(model, dtype="float32", attention="auto") is model  # nothing to change


def test_bf16_round_trip_is_exact_and_close_to_fp32(model):
    video = np.random.default_rng(0).integers(0, 256, (5, 32, 48, 3), dtype=np.uint8)
    b16 = with_execution(model, dtype="bfloat16")
    enc = encode_video(video, 25.0, b16, SAMPLER, gop_frames=5)
    dec = decode_video(enc.stream, b16)
    assert not any(g.drift for g in dec.gops) and np.array_equal(dec.video, enc.video)
    ref = decode_video(enc.stream, model)  # an fp32 decoder of a bf16 stream: flagged, and close
    assert any(g.drift for g in ref.gops)
    assert np.mean(np.abs(ref.video.astype(float) - dec.video)) < 8


def test_fast_vae_convs_are_an_execution_setting(model):
    """``--vae-convs fast``: the same model (fingerprint, weights), the original untouched; a T2V
    stream coded with it decodes on the exact path with the same latents (no drift: T2V latents do
    not depend on the VAE's decoder, and its encoder only moves the targets by ~1e-6) and pixels
    within one level; the command-line flag of the encoder and the decoder reaches the model."""
    from gvc_jax import cli
    from gvc_jax import decode as decode_cli
    from gvc_jax import encode as encode_cli
    from gvc_jax.models.registry import vae_conv_path

    fast = with_execution(model, vae_convs="fast")
    assert vae_conv_path(fast) == "fast" and vae_conv_path(model) == "exact" and fast.fingerprint == model.fingerprint
    assert vae_conv_path(with_execution(fast, vae_convs="exact")) == "exact" and fast.dit is model.dit
    assert with_execution(model, vae_convs="exact") is model
    with pytest.raises(ValueError, match="vae_convs"):
        with_execution(model, vae_convs="quick")
    video = np.random.default_rng(0).integers(0, 256, (5, 32, 48, 3), dtype=np.uint8)
    enc = encode_video(video, 25.0, fast, SAMPLER, gop_frames=5)
    dec = decode_video(enc.stream, model, strict=True)
    assert np.max(np.abs(dec.video.astype(int) - enc.video)) <= 1
    for parser in (encode_cli.build_parser(), decode_cli.build_parser()):
        args = parser.parse_args(["in", "-o", "out", "--model", "preset:tiny", "--vae-convs", "fast"])
        assert vae_conv_path(cli.model_from_args(args, None)) == "fast"
        args = parser.parse_args(["in", "-o", "out", "--model", "preset:tiny"])
        assert vae_conv_path(cli.model_from_args(args, None)) == "exact"


def test_a_resume_journal_is_bound_to_how_the_model_runs(model, tmp_path):
    """A journal written with the exact VAE is not resumed with the fast one (nor with bf16): GOPs
    coded with other numerics are never mixed into one stream."""
    from gvc_jax.codec.gop.journal import JournalError
    from gvc_jax.codec.gop.plan import ArrayReader
    from gvc_jax.codec.session import encode_stream

    video = np.random.default_rng(1).integers(0, 256, (5, 32, 48, 3), dtype=np.uint8)
    path = str(tmp_path / "v.gvc.resume")
    encode_stream(ArrayReader(video, 25.0), model, SAMPLER, gop_frames=5, resume=path).journal.close()
    for other in (with_execution(model, vae_convs="fast"), with_execution(model, dtype="bfloat16")):
        with pytest.raises(JournalError, match="different encode"):
            encode_stream(ArrayReader(video, 25.0), other, SAMPLER, gop_frames=5, resume=path)
    again = encode_stream(ArrayReader(video, 25.0), model, SAMPLER, gop_frames=5, resume=path)
    assert [g.resumed for g in again.gops] == [True]  # the same settings resume it
    again.journal.remove()
