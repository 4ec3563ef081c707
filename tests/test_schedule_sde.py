"""Time grid, sampler settings and the SDE step (docs/method_notes.md §Time grid, §Stochastic step)."""
import numpy as np
import pytest

from gvc_jax.codec.sampling.schedule import SamplerConfig, StepTables, default_shift, time_grid
from gvc_jax.codec.sampling.sde import eps_estimate, sde_step, x0_estimate


def test_time_grid_shift():
    t = time_grid(20, 5.0)
    assert t.shape == (21,) and t[0] == 1.0 and t[-1] == 0.0
    assert np.all(np.diff(t) < 0)
    s = np.linspace(1, 0, 21)
    np.testing.assert_allclose(t, 5 * s / (1 + 4 * s))
    np.testing.assert_array_equal(time_grid(7, 1.0), np.linspace(1, 0, 8))


def test_default_shift_by_resolution():
    assert default_shift(480, 832) == 3.0
    assert default_shift(720, 1280) == 5.0
    assert default_shift(144, 256) == 3.0


def test_step_tables_tail_is_deterministic():
    cfg = SamplerConfig(steps=20, tail=3, g_scale=3.0, shift=5.0)
    tab = StepTables.build(cfg)
    assert cfg.stochastic_steps == 17
    assert tab.stochastic.sum() == 17 and not tab.stochastic[17:].any()
    np.testing.assert_allclose(tab.g[:17], 3.0 * tab.t[:17].astype(np.float64) ** 2, rtol=1e-6)
    assert np.all(tab.g[17:] == 0)
    # a step that ends at t = 0 never carries bits: tail >= 1
    assert SamplerConfig(steps=4, tail=1).stochastic_steps == 3
    with pytest.raises(ValueError):
        SamplerConfig(steps=4, tail=0)


@pytest.mark.parametrize("kw", [dict(steps=0), dict(tail=30), dict(g_scale=-1), dict(K=0),
                                dict(atoms_per_frame=(0,)), dict(K=8, atoms_per_frame=(9,)), dict(seed=-1)])
def test_sampler_config_rejects_bad_values(kw):
    with pytest.raises(ValueError):
        SamplerConfig(**kw)


def test_estimates_invert_the_interpolant():
    rng = np.random.default_rng(0)
    x0, eps = rng.normal(size=(2, 50)).astype(np.float32)
    t = np.float32(0.3)
    x_t = (1 - t) * x0 + t * eps
    u = eps - x0  # the exact velocity of this pair
    np.testing.assert_allclose(x0_estimate(x_t, u, t), x0, atol=1e-6)
    np.testing.assert_allclose(eps_estimate(x_t, u, t), eps, atol=1e-6)


def test_sde_step_reduces_to_euler_and_matches_formula():
    rng = np.random.default_rng(1)
    x, u, z = rng.normal(size=(3, 40)).astype(np.float32)
    t, tn = np.float32(0.8), np.float32(0.7)
    np.testing.assert_allclose(sde_step(x, u, t, tn, 0.0, z), x - u * (t - tn), atol=1e-6)
    g = 3.0 * t**2
    dt = t - tn
    eps_hat = x + (1 - t) * u
    want = x - u * dt - (g**2 * dt / (2 * t)) * eps_hat + g * np.sqrt(dt) * z
    np.testing.assert_allclose(sde_step(x, u, t, tn, g, z), want, rtol=1e-5, atol=1e-6)


def test_sde_preserves_gaussian_marginals():
    """With the exact velocity of a N(0, s^2) data distribution, the SDE's samples keep the
    ODE's marginals: the final samples have std ~ s (a check of the drift/score signs)."""
    s = 0.5
    cfg = SamplerConfig(steps=200, tail=1, g_scale=1.0, shift=1.0)
    tab = StepTables.build(cfg)
    rng = np.random.default_rng(2)
    x = rng.normal(size=20000)
    for t, tn, g in zip(tab.t.astype(np.float64), tab.t_next.astype(np.float64), tab.g.astype(np.float64),
                        strict=False):
        var = (1 - t) ** 2 * s**2 + t**2
        x0_mean = (1 - t) * s**2 / var * x
        u = (x - x0_mean) / t
        x = sde_step(x, u, t, tn, g, rng.normal(size=x.shape))
    assert abs(np.std(x) - s) < 0.03
