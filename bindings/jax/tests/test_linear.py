"""grass_linear: its compressed gradient is Pᵀ applied to autodiff's full gradient, dx is the
usual one, W gets no gradient, and a refresh scores and selects from this step's gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_close, random
from grass_jax import LayerConfig, Projection, grass_linear


def make_projection(cfg, indices, scales, refresh=False, refresh_index=0):
    return Projection(jnp.asarray(indices, jnp.int32), jnp.asarray(scales, jnp.float32),
                      jnp.zeros((cfg.rank, cfg.k), jnp.float32), jnp.zeros((cfg.d,), jnp.float32),
                      jnp.uint32(refresh_index), refresh, cfg)


def head(y, t):
    return jnp.sum(jnp.tanh(y) * t)  # a loss whose dy is not trivial


@pytest.mark.parametrize("side", ["rows", "cols"])
def test_compressed_gradient_is_projected_autodiff_gradient(platform, side):
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    m, n, r = 24, 16, 6
    x = random(k[0], (3, 5, n))  # leading dims are flattened into tokens
    w = random(k[1], (m, n)) * 0.3
    t = random(k[2], (3, 5, m))
    cfg = LayerConfig.make(m, n, r, side)
    idx = jnp.sort(jax.random.permutation(k[3], cfg.d)[:r])
    sc = jax.random.uniform(k[4], (r,), minval=0.5, maxval=2.0)
    proj = make_projection(cfg, idx, sc)

    def loss(x, w, proj):
        return head(grass_linear(x, w, proj), t)

    dx, dw, dproj = jax.jit(jax.grad(loss, argnums=(0, 1, 2), allow_int=True))(x, w, proj)
    gx, G = jax.grad(lambda x, w: head(x @ w.T, t), argnums=(0, 1))(x, w)
    Gp = G if side == "rows" else G.T
    assert_close(dproj.sink, sc[:, None] * Gp[idx], what="g")
    assert_close(dx, gx, what="dx")
    assert not np.asarray(dw).any(), "W's cotangent must be zero: its gradient goes to the sink"
    assert_close(grass_linear(x, w, proj), x @ w.T, what="y")


@pytest.mark.parametrize("static", [True, False])
def test_refresh_scores_and_selects_from_this_step(platform, static):
    k = jax.random.split(jax.random.PRNGKey(1), 3)
    m, n, r = 30, 10, 5
    x, w, t = random(k[0], (12, n)), random(k[1], (m, n)) * 0.3, random(k[2], (12, m))
    cfg = LayerConfig.make(m, n, r, "rows", method="top_r")
    refresh = True if static else jnp.bool_(True)
    proj = make_projection(cfg, jnp.arange(r), jnp.ones(r), refresh=refresh)
    dproj = jax.jit(jax.grad(lambda w, p: head(grass_linear(x, w, p), t), argnums=1,
                             allow_int=True))(w, proj)
    G = jax.grad(lambda w: head(x @ w.T, t))(w)
    norms = jnp.linalg.norm(G, axis=1)
    assert_close(dproj.score_sink, norms, what="scores")
    top = np.sort(np.argsort(-np.asarray(norms))[:r])
    assert_close(dproj.sink, G[top], what="g at refresh")  # compressed with the new rows


def test_no_refresh_returns_zero_scores(platform):
    m, n, r = 12, 8, 4
    cfg = LayerConfig.make(m, n, r, "rows")
    proj = make_projection(cfg, jnp.arange(r), jnp.ones(r), refresh=jnp.bool_(False))
    x, w = random(jax.random.PRNGKey(2), (5, n)), random(jax.random.PRNGKey(3), (m, n))
    dproj = jax.grad(lambda p: jnp.sum(grass_linear(x, w, p) ** 2), allow_int=True)(proj)
    assert not np.asarray(dproj.score_sink).any()


def test_shape_mismatch_is_reported():
    cfg = LayerConfig.make(12, 8, 4, "rows")
    proj = make_projection(cfg, jnp.arange(4), jnp.ones(4))
    with pytest.raises(ValueError, match="projection was made for"):
        grass_linear(jnp.ones((2, 8)), jnp.ones((8, 12)), proj)


def test_per_example_gradients_under_vmap(platform):
    """vmap(grad): each example's compressed gradient, by the ops' loop-of-calls rule."""
    m, n, r = 10, 6, 3
    cfg = LayerConfig.make(m, n, r, "rows")
    idx, sc = jnp.array([1, 5, 8]), jnp.array([1.0, 0.5, 2.0])
    proj = make_projection(cfg, idx, sc)
    xs, w = random(jax.random.PRNGKey(4), (4, 7, n)), random(jax.random.PRNGKey(5), (m, n))
    f = lambda x: jax.grad(lambda p: jnp.sum(grass_linear(x, w, p) ** 2), allow_int=True)(
        proj).sink
    got = jax.vmap(f)(xs)
    for i in range(4):
        assert_close(got[i], f(xs[i]), what="per-example g")
