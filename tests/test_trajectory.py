"""The shared encoder/decoder trajectory (one compiled scan; indices searched or read)."""
import jax.numpy as jnp
import numpy as np
import pytest

from gvc_jax.codec.sampling.schedule import SamplerConfig
from gvc_jax.codec.sampling.trajectory import Picks, Trajectory, canonical_picks

SHAPE = (3, 4, 6, 4)  # [F, h, w, C] -> D = 96 per frame
PRIOR_STD = 0.7


def gaussian_velocity(params, x_t, t, t_feat, cond):
    """Exact velocity E[eps - x0 | x_t] for data x0 ~ N(mean, s^2) per coordinate."""
    mean, s = params["mean"], params["std"]
    var = (1 - t) ** 2 * s**2 + t**2
    x0_mean = mean + (1 - t) * s**2 / var * (x_t - (1 - t) * mean)
    return (x_t - x0_mean) / t


PARAMS = {"mean": jnp.float32(0.1), "std": jnp.float32(PRIOR_STD)}


def make(M, K=128, codebook="hadamard", steps=8, tail=2, frames_m=None):
    cfg = SamplerConfig(steps=steps, tail=tail, g_scale=2.0, shift=3.0, K=K,
                        atoms_per_frame=frames_m or (M,) * SHAPE[0], codebook=codebook, seed=7)
    return Trajectory(gaussian_velocity, cfg, SHAPE)


def run(traj, gop, atoms=None, *, target=None, picks=None, on_step=None):
    """One GOP through ``Trajectory.run_many`` without a mesh (the plain program)."""
    return traj.run_many(None, PARAMS, [{}], [gop], [atoms], targets=[target], picks=[picks], on_step=on_step)[0]


def target(seed=0):
    return (0.1 + PRIOR_STD * np.random.default_rng(seed).normal(size=SHAPE)).astype(np.float32)


@pytest.mark.parametrize("codebook", ["hadamard", "rademacher", "gaussian"])
def test_decoder_reproduces_encoder_bitwise(codebook):
    traj = make(4, codebook=codebook)
    x_enc, picks = run(traj, gop=3, target=target())
    x_dec, picks_dec = run(traj, gop=3, picks=Picks(np.asarray(picks.indices), np.asarray(picks.coeffs)))
    np.testing.assert_array_equal(np.asarray(x_enc), np.asarray(x_dec))
    np.testing.assert_array_equal(np.asarray(picks.indices), np.asarray(picks_dec.indices))
    # a single flipped sign changes the result
    coeffs = np.asarray(picks.coeffs).copy()
    coeffs[0, 0, 0] *= -1
    x_bad, _ = run(traj, gop=3, picks=Picks(np.asarray(picks.indices), coeffs))
    assert not np.array_equal(np.asarray(x_bad), np.asarray(x_enc))


def test_picks_are_canonical_and_follow_atoms_per_frame():
    traj = make(None, frames_m=(2, 5, 3), steps=6, tail=2)
    _, picks = run(traj, gop=0, target=target())
    idx, coef = np.asarray(picks.indices), np.asarray(picks.coeffs)
    assert idx.shape == (6, 3, 16)  # slots: the next power of two >= max M, at least 16
    for s in range(6):
        for f, m in enumerate((2, 5, 3)):
            if s < 4:
                assert np.all(np.abs(coef[s, f, :m]) == 1) and np.all(coef[s, f, m:] == 0)
                assert np.all(np.diff(idx[s, f, :m]) > 0)
            else:
                assert np.all(coef[s, f] == 0) and np.all(idx[s, f] == 0)


def test_canonical_picks_sorts_and_clears_unused():
    idx = jnp.array([[9, 2, 5, 7]], jnp.int32)
    coef = jnp.array([[1.0, -1.0, 0.0, 1.0]])
    i, c = canonical_picks(idx, coef)
    np.testing.assert_array_equal(np.asarray(i), [[2, 7, 9, 0]])
    np.testing.assert_array_equal(np.asarray(c), [[-1.0, 1.0, 1.0, 0.0]])


def test_fidelity_grows_with_rate():
    """Final-latent MSE to the target falls as M grows (1, 4, 16 of K = 128) and beats the free SDE sample."""
    x0 = target(1)
    mses = []
    for M in (1, 4, 16):
        x, _ = run(make(M, K=128, steps=12, tail=2), gop=0, target=x0)
        mses.append(float(np.mean((np.asarray(x) - x0) ** 2)))
    # an uncoded sample: the same sampler with atoms searched against an unrelated target
    free, _ = run(make(16, K=128, steps=12, tail=2), gop=0, target=target(99))
    free_mse = float(np.mean((np.asarray(free) - x0) ** 2))
    assert mses[0] > mses[1] > mses[2], mses
    assert mses[2] < 0.25 * free_mse, (mses, free_mse)


def test_gop_index_and_seed_change_the_trajectory():
    traj = make(4)
    a, _ = run(traj, gop=0, target=target())
    b, _ = run(traj, gop=1, target=target())
    assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_run_needs_exactly_one_source():
    traj = make(2)
    with pytest.raises(ValueError):
        run(traj, gop=0)
    with pytest.raises(ValueError):
        Trajectory(gaussian_velocity, SamplerConfig(atoms_per_frame=(2, 2), K=64), SHAPE)


def test_per_gop_atoms_are_data_and_match_a_config_with_those_atoms():
    """M given at run time equals M fixed in the config (same capacity), and a run with fewer atoms
    picks the first M of the larger run's ranking."""
    big = make(None, frames_m=(5, 5, 5), steps=6, tail=2)
    small = make(None, frames_m=(2, 3, 1), steps=6, tail=2)
    assert big.slots == small.slots == 16
    x_data, p_data = run(big, 0, np.array([2, 3, 1]), target=target())
    x_cfg, p_cfg = run(small, 0, target=target())
    np.testing.assert_array_equal(np.asarray(x_data), np.asarray(x_cfg))
    np.testing.assert_array_equal(np.asarray(p_data.indices), np.asarray(p_cfg.indices))
    with pytest.raises(ValueError, match="atoms per frame"):
        run(big, 0, np.array([2, 3, 17]), target=target())


def test_on_step_reports_every_step_of_the_gop():
    traj = make(2, steps=5, tail=1)
    seen = []
    run(traj, gop=4, target=target(), on_step=lambda g, s: seen.append((g, s)))
    assert seen == [(4, s) for s in range(5)]


def test_x0_cache_skips_the_velocity_on_its_steps_and_round_trips():
    import jax

    from gvc_jax.codec.sampling.schedule import SamplerError, x0_cache_schedule

    calls = []

    def counted_velocity(params, x_t, t, t_feat, cond):
        jax.debug.callback(lambda tt: calls.append(float(tt)), t)
        return gaussian_velocity(params, x_t, t, t_feat, cond)

    def code(skips, **picks):
        cfg = SamplerConfig(steps=8, tail=2, g_scale=2.0, shift=3.0, K=128, atoms_per_frame=(4,) * SHAPE[0],
                            seed=7, x0_cache=skips)
        calls.clear()
        x, p = run(Trajectory(counted_velocity, cfg, SHAPE), gop=0, **picks)
        jax.effects_barrier()
        return np.asarray(x), p, len(calls)

    x_ref, _, n_full = code((), target=target())
    skips = x0_cache_schedule("alternate", 8)
    assert skips == (1, 3, 5, 7)
    x_enc, picks, n_enc = code(skips, target=target())
    x_dec, _, n_dec = code(skips, picks=Picks(np.asarray(picks.indices), np.asarray(picks.coeffs)))
    assert n_full == 8 and n_enc == n_dec == 4  # the DiT really is not called on skipped steps
    np.testing.assert_array_equal(x_enc, x_dec)
    # the rebuilt velocity is a real approximation: close to, not equal to, the full trajectory
    err = float(np.sqrt(np.mean((x_enc - target()) ** 2)))
    assert not np.array_equal(x_enc, x_ref) and err < 2 * float(np.sqrt(np.mean((x_ref - target()) ** 2))) + 0.05
    for bad in ((0, 2), (2, 3), (3, 2), (8,), "1,2", "often"):
        with pytest.raises(SamplerError):
            x0_cache_schedule(bad, 8)
