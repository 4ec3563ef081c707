"""Multi-resolution building blocks (gvc_jax/codec/sampling/multires.py; shared/TURBO.md §1-§7)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft

from gvc_jax.codec.format.ranks import subset_rank_bits
from gvc_jax.codec.sampling import multires as mr
from gvc_jax.codec.sampling.codebooks import frame_key, get_codebook
from gvc_jax.codec.sampling.schedule import (
    INITIAL_NOISE_STREAM,
    MAX_STEPS,
    SamplerConfig,
    SamplerError,
    x0_cache_schedule,
)
from gvc_jax.codec.sampling.trajectory import canonical_picks


def _latent(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _scipy_dct(x):
    return scipy.fft.dctn(np.asarray(x, np.float64), type=2, norm="ortho", axes=(1, 2))


# ------------------------------------------------------------------------------------ DCT

@pytest.mark.parametrize("shape", [(2, 6, 10, 3), (1, 15, 7, 16), (3, 1, 4, 2)])
def test_dct_matches_scipy_and_inverts(shape):
    x = _latent(shape, 1)
    X = mr.dct2(x)
    np.testing.assert_allclose(np.asarray(X), _scipy_dct(x), atol=2e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(mr.idct2(X)), np.asarray(x), atol=2e-5, rtol=0)
    ref_inv = scipy.fft.idctn(np.asarray(X, np.float64), type=2, norm="ortho", axes=(1, 2))
    np.testing.assert_allclose(np.asarray(mr.idct2(X)), ref_inv, atol=2e-5, rtol=0)
    np.testing.assert_allclose(mr.dct_matrix(shape[1]) @ mr.dct_matrix(shape[1]).T, np.eye(shape[1]), atol=1e-12)


def test_lowpass_target_is_the_dct_block_without_rescaling():
    x = _latent((2, 12, 20, 4), 2)
    lo = mr.lowpass_target(x, (8, 12))
    assert lo.shape == (2, 8, 12, 4)
    want = scipy.fft.idctn(_scipy_dct(x)[:, :8, :12], type=2, norm="ortho", axes=(1, 2))
    np.testing.assert_allclose(np.asarray(lo), want, atol=2e-5, rtol=0)
    # no rescaling: a constant c becomes c * sqrt(HW / (h w)) (louder, TURBO §3)
    const = jnp.full((1, 12, 20, 2), 0.5, jnp.float32)
    np.testing.assert_allclose(np.asarray(mr.lowpass_target(const, (8, 12))), 0.5 * math.sqrt(240 / 96), rtol=1e-5)


def test_lowpass_of_a_band_limited_latent_round_trips():
    y = _latent((2, 6, 10, 3), 3)
    spec = jnp.pad(mr.dct2(y), ((0, 0), (0, 9 - 6), (0, 16 - 10), (0, 0)))
    x = mr.idct2(spec)  # band-limited to the 6x10 block at 9x16
    np.testing.assert_allclose(np.asarray(mr.lowpass_target(x, (6, 10))), np.asarray(y), atol=3e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(mr.highpass(x, (6, 10))), 0.0, atol=3e-5)


def test_highpass_zeroes_exactly_the_low_block():
    z = _latent((2, 9, 16, 3), 4)
    Z = _scipy_dct(mr.highpass(z, (6, 10)))
    ref = _scipy_dct(z)
    np.testing.assert_allclose(Z[:, :6, :10], 0.0, atol=3e-5)
    band = np.ones((9, 16), bool)
    band[:6, :10] = False
    np.testing.assert_allclose(Z[:, band], ref[:, band], atol=3e-5)
    # lowpass + highpass split the signal: x = upsampled lowpass + highpass
    up = mr.idct2(jnp.pad(mr.dct2(mr.lowpass_target(z, (6, 10))), ((0, 0), (0, 3), (0, 6), (0, 0))))
    np.testing.assert_allclose(np.asarray(up + mr.highpass(z, (6, 10))), np.asarray(z), atol=3e-5)
    with pytest.raises(ValueError):
        mr.highpass(z, (10, 10))


# ------------------------------------------------------------------------------------ transition

def test_transition_keeps_the_low_block_and_fills_the_band_with_t_eps():
    small = _latent((3, 6, 10, 4), 5) * 1.7
    t = 0.73
    key = mr.transition_noise_key(7, 2, 0, 8)
    pre = mr.transition_unaligned(small, t, key, (9, 16))
    assert pre.shape == (3, 9, 16, 4)
    P = _scipy_dct(pre)
    np.testing.assert_allclose(P[:, :6, :10], _scipy_dct(small), atol=3e-5, rtol=0)
    eps = np.asarray(mr.transition_noise(key, (3, 9, 16, 4)))
    band = np.ones((9, 16), bool)
    band[:6, :10] = False
    np.testing.assert_allclose(P[:, band], t * eps[:, band], atol=3e-5, rtol=0)
    # eps is standard normal and a frame's noise does not depend on how many frames there are
    assert abs(eps.std() - 1) < 0.1
    np.testing.assert_array_equal(np.asarray(mr.transition_noise(key, (1, 9, 16, 4)))[0], eps[0])
    # another key (stage, step, gop or seed) gives another band
    for other in (mr.transition_noise_key(7, 2, 1, 8), mr.transition_noise_key(7, 2, 0, 9),
                  mr.transition_noise_key(7, 3, 0, 8), mr.transition_noise_key(8, 2, 0, 8)):
        assert not np.allclose(np.asarray(mr.transition_unaligned(small, t, other, (9, 16))), np.asarray(pre))


@pytest.mark.parametrize("t", [0.9, 0.5, 0.2])
def test_transition_aligns_the_global_std(t):
    small = _latent((2, 6, 10, 4), 6) * 1.5
    key = mr.transition_noise_key(0, 0, 0, 5)
    out = mr.transition(small, t, key, (9, 16))
    want = math.sqrt(1 - 2 * t + 2 * t * t)
    assert abs(float(jnp.std(out)) - want) < 1e-5
    pre = mr.transition_unaligned(small, t, key, (9, 16))
    # a pure rescale of the unaligned state (the low band is scaled too)
    ratio = np.asarray(out) / np.asarray(pre)
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-4)
    np.testing.assert_allclose(float(mr.transition_std(t)), want, rtol=1e-6)


def test_transition_runs_under_jit_with_traced_time_and_key():
    small = _latent((2, 4, 6, 2), 7)
    f = jax.jit(lambda s, t, seed, step: mr.transition(s, t, mr.transition_noise_key(seed, 0, 0, step), (8, 8)))
    a = f(small, jnp.float32(0.6), jnp.uint32(3), jnp.int32(4))
    b = mr.transition(small, 0.6, mr.transition_noise_key(3, 0, 0, 4), (8, 8))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


# ------------------------------------------------------------------------------------ transition atoms

def test_transition_atom_step_is_reserved():
    sde = 17
    regular = set(range(sde))
    reserved = [mr.transition_atom_step(sde, s) for s in range(sde - 1)]
    assert reserved == list(range(17, 33))
    assert not regular & set(reserved)
    assert max(mr.transition_atom_step(MAX_STEPS - 1, s) for s in (0, MAX_STEPS - 3)) < INITIAL_NOISE_STREAM
    assert INITIAL_NOISE_STREAM < mr.TRANSITION_NOISE_STREAM
    for bad in ((17, -1), (17, 16), (0, 0)):
        with pytest.raises(ValueError):
            mr.transition_atom_step(*bad)
    # the most stages a valid plan can have at this T_sde: every switch step in (0, T_sde)
    plan = mr.StagePlan(tuple((16 * (i + 1), 16 * (i + 1)) for i in range(4)), (1, 2, 3))
    mr.check_stage_plan(plan, (64, 64), 4 + 3, 3, patch=1)
    assert [mr.transition_atom_step(4, s) for s in range(plan.stages - 1)] == [4, 5, 6]


@pytest.mark.parametrize("kind", ["hadamard", "gaussian"])
def test_transition_atoms_code_the_new_band(kind):
    frames, (H, W, C), small_hw, t = 2, (4, 6, 4), (2, 4), 0.6
    target_next = _latent((frames, H, W, C), 8)
    cb = get_codebook(kind, 64, H * W * C)
    keys = mr.transition_atom_keys(5, 1, 17, 0, frames)
    want_key = frame_key(5, 1, 17, 1)
    np.testing.assert_array_equal(jax.random.key_data(keys[1]), jax.random.key_data(want_key))
    apf = jnp.asarray([3, 5])
    search = jax.jit(mr.search_transition_atoms, static_argnums=(0, 3, 4))  # as the trajectory would run it
    idx, coef = search(cb, keys, target_next, small_hw, 8, apf)
    assert idx.shape == coef.shape == (frames, 8)
    np.testing.assert_array_equal(np.count_nonzero(np.asarray(coef), axis=1), [3, 5])
    # the atoms are the top ones for the highpass of the target, not for the target itself
    hp = mr.highpass(target_next, small_hw).reshape(frames, -1)
    all_ips = np.asarray(jax.jit(jax.vmap(cb.inner_products))(keys, hp))
    for f in range(frames):
        ips = all_ips[f]
        top = np.argsort(-np.abs(ips), kind="stable")[: int(apf[f])]
        assert set(np.asarray(idx[f, : int(apf[f])]).tolist()) == set(top.tolist())
        np.testing.assert_array_equal(np.asarray(coef[f, : int(apf[f])]), np.where(ips[top] >= 0, 1.0, -1.0))
    idx, coef = canonical_picks(idx, coef)
    inj = jax.jit(mr.inject_transition_atoms, static_argnums=(0, 5, 6))(cb, keys, idx, coef, t, (frames, H, W, C),
                                                                       small_hw)
    assert inj.shape == (frames, H, W, C)
    z = jax.jit(jax.vmap(cb.combine))(keys, idx, coef).reshape(frames, H, W, C)
    np.testing.assert_allclose(np.asarray(inj), (1 - t) * np.asarray(mr.highpass(z, small_hw)), atol=1e-6)
    np.testing.assert_allclose(_scipy_dct(inj)[:, :2, :4], 0.0, atol=3e-5)  # nothing in the low block
    # the injection points toward the target's band
    assert float(jnp.sum(inj * mr.highpass(target_next, small_hw))) > 0


# ------------------------------------------------------------------------------------ stage plans

def test_parse_stage_plan_published_examples():
    p = mr.parse_stage_plan("832x480@8", coded=(1280, 720), steps=20, tail=3)
    assert p == mr.StagePlan(((832, 480), (1280, 720)), (8,))
    assert p.spec() == "832x480@8" and p.stages == 2 and p.coded == (1280, 720)
    assert p.latent_sizes(8) == ((60, 104), (90, 160))
    assert p.stage_starts() == (0, 8)
    assert [p.stage_of_step(i) for i in (0, 7, 8, 16, 19)] == [0, 0, 1, 1, 1]
    np.testing.assert_array_equal(p.step_stages(20), [0] * 8 + [1] * 12)
    q = mr.parse_stage_plan(" 832x480@6, 1280x720@12 ", coded=(1920, 1088), steps=20, tail=3, patch=(1, 2, 2))
    assert q is not None and q.sizes == ((832, 480), (1280, 720), (1920, 1088)) and q.switches == (6, 12)
    np.testing.assert_array_equal(q.step_stages(20), [0] * 6 + [1] * 6 + [2] * 8)
    for off in ("off", "none", "", " OFF "):
        assert mr.parse_stage_plan(off, coded=(1280, 720), steps=20, tail=3) is None
    assert mr.parse_stage_plan("auto", coded=(1280, 720), steps=20, tail=3) == p


@pytest.mark.parametrize("spec, coded, fragment", [
    ("832x480", (1280, 720), "WIDTHxHEIGHT@STEP"),
    ("832x480@", (1280, 720), "WIDTHxHEIGHT@STEP"),
    ("832x480@8;1280x720@12", (1920, 1088), "WIDTHxHEIGHT@STEP"),
    ("-832x480@8", (1280, 720), "WIDTHxHEIGHT@STEP"),
    ("832x480@8,", (1280, 720), "WIDTHxHEIGHT@STEP"),
    ("830x480@8", (1280, 720), "multiples of 16"),
    ("0x480@8", (1280, 720), "multiples of 16"),
    ("1280x480@8", (1280, 720), "increase strictly"),
    ("832x720@8", (1280, 720), "increase strictly"),
    ("1280x720@6,832x480@12", (1920, 1088), "increase strictly"),
    ("832x480@8,832x720@12", (1920, 1088), "increase strictly"),
    ("832x480@0", (1280, 720), "switch steps"),
    ("832x480@17", (1280, 720), "strictly inside"),
    ("832x480@30", (1280, 720), "strictly inside"),
    ("832x480@12,1280x720@6", (1920, 1088), "increase strictly"),
    ("832x480@8,1280x720@8", (1920, 1088), "increase strictly"),
    ("848x496@8", (1280, 720), "multiple of 32x32"),
])
def test_bad_stage_plans_are_refused_in_one_line(spec, coded, fragment):
    patch = (4, 4) if "multiple of 32" in fragment else (2, 2)
    with pytest.raises(mr.StagePlanError) as err:
        mr.parse_stage_plan(spec, coded=coded, steps=20, tail=3, patch=patch)
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg, msg
    assert isinstance(err.value, ValueError)


def test_stage_plan_construction_and_context_checks():
    good = mr.StagePlan(((832, 480), (1280, 720)), (8,))
    with pytest.raises(mr.StagePlanError, match="2 to 8 stages"):
        mr.StagePlan(((1280, 720),), ())
    with pytest.raises(mr.StagePlanError, match="2 to 8 stages"):
        mr.StagePlan(tuple((16 * i, 16 * i) for i in range(1, 10)), tuple(range(1, 9)))
    with pytest.raises(mr.StagePlanError, match="need 1 switch"):
        mr.StagePlan(((832, 480), (1280, 720)), (4, 8))
    with pytest.raises(mr.StagePlanError, match="ints"):
        mr.StagePlan(((832, 480), (1280, 720)), (8.0,))
    with pytest.raises(mr.StagePlanError, match="two ints"):
        mr.StagePlan(((832, 480, 1), (1280, 720)), (8,))
    with pytest.raises(mr.StagePlanError, match="two ints"):
        mr.StagePlan(((True, 480), (1280, 720)), (8,))
    with pytest.raises(mr.StagePlanError, match="coded size 1920x1088"):
        mr.check_stage_plan(good, (1920, 1088), 20, 3)
    with pytest.raises(mr.StagePlanError, match="at least 2 stochastic"):
        mr.check_stage_plan(good, (1280, 720), 20, 19)
    with pytest.raises(mr.StagePlanError, match="strictly inside"):
        mr.check_stage_plan(good, (1280, 720), 10, 2)
    with pytest.raises(mr.StagePlanError, match="multiple of 48x48"):
        mr.check_stage_plan(good, (1280, 720), 20, 3, spatial_stride=8, patch=(1, 6, 6))
    assert mr.check_stage_plan(good, (1280, 720), 12, 3) is good  # tau 8 < T_sde 9
    with pytest.raises(mr.StagePlanError, match="VAE stride"):
        mr.StagePlan(((16, 16), (48, 48)), (1,)).latent_sizes(32)


def test_auto_stage_plan():
    assert mr.auto_stage_plan((1280, 720), 20, 3) == mr.StagePlan(((832, 480), (1280, 720)), (8,))
    assert mr.auto_stage_plan((1920, 1088), 20, 3) == mr.StagePlan(((832, 480), (1280, 720), (1920, 1088)), (6, 12))
    assert mr.auto_stage_plan((720, 1280), 20, 3) == mr.StagePlan(((480, 832), (720, 1280)), (8,))
    # at or below the floor (the native bucket's area): plain
    for coded in ((832, 480), (480, 832), (640, 480), (256, 144), (624, 624)):
        assert mr.auto_stage_plan(coded, 20, 3) is None, coded
    assert mr.auto_stage_plan((1280, 720), 20, 3, native=(1280, 720)) is None
    # above the floor but no stage fits strictly below the coded size in both dimensions
    assert mr.auto_stage_plan((848, 480), 20, 3) is None
    # too few stochastic steps for a switch strictly inside them
    assert mr.auto_stage_plan((1280, 720), 3, 2) is None
    # another aspect: the video's aspect at (at least) the native area, on the model's grid
    sq = mr.auto_stage_plan((1024, 1024), 20, 3)
    assert sq is not None and sq.sizes[0][0] == sq.sizes[0][1] and sq.sizes[0][0] ** 2 >= 832 * 480
    for coded in ((1024, 1024), (2048, 400), (3840, 2160), (1600, 912)):
        for steps, tail in ((20, 3), (10, 2), (50, 5)):
            plan = mr.auto_stage_plan(coded, steps, tail)
            assert plan is not None and plan.coded == coded
            mr.check_stage_plan(plan, coded, steps, tail)
            w, h = plan.sizes[0]
            assert w * h >= 832 * 480  # never below the floor
            assert mr.StagePlan.from_bytes(plan.to_bytes()) == plan


def test_stage_plan_bytes_round_trip_and_rejections():
    plans = [mr.StagePlan(((832, 480), (1280, 720)), (8,)),
             mr.StagePlan(((832, 480), (1280, 720), (1920, 1088)), (6, 12)),
             mr.StagePlan(((16, 16), (16384, 16384)), (MAX_STEPS - 1,)),
             mr.StagePlan(tuple((16 * i, 32 * i) for i in range(1, 9)), tuple(range(1, 8)))]
    for p in plans:
        b = p.to_bytes()
        assert len(b) == mr.StagePlan.encoded_length(p.stages) == 6 * p.stages
        assert mr.StagePlan.from_bytes(b) == p
        assert mr.StagePlan.read(b"xy" + b + b"tail", 2) == (p, 2 + len(b))
        for cut in range(len(b)):
            with pytest.raises(mr.StagePlanError):
                mr.StagePlan.from_bytes(b[:cut])
        with pytest.raises(mr.StagePlanError, match="trailing"):
            mr.StagePlan.from_bytes(b + b"\0")
    assert plans[0].to_bytes().hex() == "01020034001e0050002d0008"
    b = bytearray(plans[1].to_bytes())
    bad = {  # byte position -> value, and the message it must give
        (0, 2): "version", (1, 1): "stages", (1, 9): "stages", (3, 0): "multiples of 16",
        (7, 0x30): "increase strictly", (15, 0): "switch steps", (17, 5): "increase strictly", (1, 2): "trailing",
    }
    for (pos, value), fragment in bad.items():
        forged = bytearray(b)
        forged[pos] = value
        with pytest.raises(mr.StagePlanError, match=fragment):
            mr.StagePlan.from_bytes(bytes(forged))
    forged = bytearray(b)
    forged[14:16] = (MAX_STEPS).to_bytes(2, "big")  # switch step out of range
    with pytest.raises(mr.StagePlanError, match="switch steps"):
        mr.StagePlan.from_bytes(bytes(forged))
    forged = bytearray(b)
    forged[10:12] = (1025).to_bytes(2, "big")  # width 16400 > MAX_SIZE
    with pytest.raises(mr.StagePlanError, match="multiples of 16"):
        mr.StagePlan.from_bytes(bytes(forged))
    rng = np.random.default_rng(0)
    for i in range(600):  # garbage never raises anything but StagePlanError (half of it with a valid prefix)
        junk = rng.integers(0, 256, int(rng.integers(0, 50)), dtype=np.uint8).tobytes()
        if i % 2 and len(junk) >= 2:
            junk = bytes((1, 2 + i % 7)) + junk[2:]
        try:
            mr.StagePlan.from_bytes(junk)
        except mr.StagePlanError:
            pass
    with pytest.raises(mr.StagePlanError, match="offset"):
        mr.StagePlan.read(b"\x01\x02", 5)


# ------------------------------------------------------------------------------------ refresh schedule

def test_refresh_schedule_720p_two_stages_with_warmup():
    s = mr.mr_refresh_schedule(20, 3, 2, (8,), warmup=True)
    assert s.calls == (0, 2, 4, 6, 8, 9, 11, 13, 15, 17, 18, 19)
    assert len(s.calls) == 12 and s.calls_per_stage() == (4, 8)
    assert sorted(s.calls + s.skips) == list(range(20))
    assert s.as_x0_cache() == s.skips  # a valid x0-cache schedule for the existing sampler
    SamplerConfig(x0_cache=s.skips)


def test_refresh_schedule_1080p_three_stages():
    s = mr.mr_refresh_schedule(20, 3, 2, (6, 12), warmup=True)
    assert s.calls == (0, 2, 4, 6, 7, 9, 11, 12, 13, 15, 17, 18, 19)
    assert len(s.calls) == 13 and s.calls_per_stage() == (3, 4, 6)


def test_refresh_schedule_rules():
    # never in the tail, never at a transition, never at a stage's first step
    for taus in ((), (8,), (6, 12), (1, 2, 3)):
        for p in (1, 2, 3, 4):
            for warmup in (False, True):
                s = mr.mr_refresh_schedule(20, 3, p, taus, warmup)
                assert 0 in s.calls and all(i in s.calls for i in taus) and {17, 18, 19} <= set(s.calls)
                if p == 1:
                    assert s.skips == ()
    # without warmup the count is the same here but the refresh after the switch moves
    s = mr.mr_refresh_schedule(20, 3, 2, (8,), warmup=False)
    assert s.calls == (0, 2, 4, 6, 8, 10, 12, 14, 16, 17, 18, 19)
    assert len(mr.mr_refresh_schedule(20, 3, 2, (6, 12), warmup=False).calls) == 12
    # the existing x0-cache 'alternate' agrees on the stochastic steps (it also skips in the tail)
    plain = mr.mr_refresh_schedule(20, 3, 2)
    alt = x0_cache_schedule("alternate", 20)
    assert plain.skips == tuple(i for i in alt if i < 17) and len(plain.calls) == 12 and 20 - len(alt) == 10
    # periods >= 3 skip twice in a row, which the existing sampler refuses
    with pytest.raises(SamplerError):
        mr.mr_refresh_schedule(20, 3, 3, (8,), True).as_x0_cache()
    for bad in ((20, 3, 0, ()), (20, 3, 2, (17,)), (20, 3, 2, (0,)), (20, 3, 2, (8, 8)), (20, 0, 2, ()),
                (20, 21, 2, ())):
        with pytest.raises(ValueError):
            mr.mr_refresh_schedule(*bad)


# ------------------------------------------------------------------------------------ bits

def test_published_bit_totals():
    """TURBO §7: 9 latent frames, T = 20 with tail 3 (17 stochastic steps), M = 64 unless noted."""
    m64, m80 = [64] * 9, [80] * 9
    assert mr.published_gop_bits(17, m64, 16384).total == 146_880                       # full-res, K 16384
    low = mr.published_gop_bits(17, m64, (4096, 16384), (8,))                          # S = 2, K_low 4096
    assert low.total == 146_304
    assert low.stages == (8 * 9 * 64 * 13, 9 * 9 * 64 * 15) and low.transitions == (8_640,)  # 8,640 a transition
    assert mr.published_gop_bits(17, m64, 16384, (8,)).total == 155_520                # S = 2, K 16384 both
    assert mr.published_gop_bits(17, m80, 16384, (6, 12)).total == 205_200             # 1080p S = 3, M = 80
    assert round(8_640 / 155_520 * 100, 1) == 5.6  # "about 5.6 % of the GOP"


def test_rank_coded_bits():
    apf = [64] * 8 + [32]
    plain = mr.rank_coded_gop_bits(17, apf, 16384)
    per_step = sum(subset_rank_bits(16384, m) + m for m in apf)
    assert plain.total == 17 * per_step and plain.transitions == ()
    b = mr.rank_coded_gop_bits(17, apf, (4096, 8192, 16384), (6, 12))
    k = [sum(subset_rank_bits(K, m) + m for m in apf) for K in (4096, 8192, 16384)]
    assert b.stages == (6 * k[0], 6 * k[1], 5 * k[2]) and b.transitions == (k[1], k[2])
    assert b.total == sum(b.stages) + k[1] + k[2]
    # rank coding beats the published count
    assert b.total < mr.published_gop_bits(17, apf, (4096, 8192, 16384), (6, 12)).total
    with pytest.raises(ValueError):
        mr.rank_coded_gop_bits(17, apf, (4096, 16384), (6, 12))
    with pytest.raises(ValueError):
        mr.rank_coded_gop_bits(17, apf, 16384, (17,))


def test_rank_coded_bits_match_the_stream_payload():
    from gvc_jax.codec.format import bitstream
    sampler = SamplerConfig.for_gop(33, 48, K=4096)
    header = bitstream.Header(model_fingerprint=b"\0" * 8, preset="tiny", variant="t2v", width=64, height=64,
                              orig_width=64, orig_height=64, num_frames=33, fps_num=24, fps_den=1, gop_frames=33,
                              num_gops=1, sampler=sampler)
    assert mr.rank_coded_gop_bits(sampler.stochastic_steps, sampler.atoms_per_frame, 4096).total == \
        bitstream.payload_bits(header)
