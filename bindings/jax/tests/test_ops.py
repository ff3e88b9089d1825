"""Each FFI op against a jax.numpy reference on random inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import assert_close, random
from grass_jax import GrassError, ops

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


def full_grad(x, dy):
    return dy.astype(jnp.float32).T @ x.astype(jnp.float32)  # m x n


def projected_rows(G, side):
    return G if side == "rows" else G.T  # d x k


def keys(seed, n):
    return jax.random.split(jax.random.PRNGKey(seed), n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("side", ["rows", "cols"])
def test_row_scores(platform, dtype, side):
    k = keys(1, 2)
    x, dy = random(k[0], (33, 24), dtype), random(k[1], (33, 40), dtype)
    got = jax.jit(lambda x, dy: ops.row_scores(x, dy, side))(x, dy)
    want = jnp.linalg.norm(projected_rows(full_grad(x, dy), side), axis=1)
    assert_close(got, want, what="scores")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("side", ["rows", "cols"])
def test_sparse_grad(platform, dtype, side):
    k = keys(2, 4)
    x, dy = random(k[0], (17, 24), dtype), random(k[1], (17, 40), dtype)
    d = 40 if side == "rows" else 24
    idx = jnp.sort(jax.random.choice(k[2], d, (9,), replace=True)).astype(jnp.int32)
    scales = jax.random.uniform(k[3], (9,), minval=0.5, maxval=2.0)
    got = jax.jit(lambda *a: ops.sparse_grad(*a, side=side))(x, dy, idx, scales)
    want = scales[:, None] * projected_rows(full_grad(x, dy), side)[idx]
    assert_close(got, want, what="g")


def test_select_top_r(platform):
    s = jax.random.uniform(jax.random.PRNGKey(3), (50,)) + 0.1
    idx, sc = jax.jit(lambda s: ops.select(s, jnp.uint32(0), rank=7, method="top_r"))(s)
    np.testing.assert_array_equal(idx, np.sort(np.argsort(-np.asarray(s))[:7]))
    np.testing.assert_array_equal(sc, np.ones(7, np.float32))


def test_select_multinomial_scales(platform):
    s = jax.random.uniform(jax.random.PRNGKey(4), (30,)) + 0.1
    r, p = 6, 2
    idx, sc = ops.select(s, jnp.uint32(5), rank=r, method="multinomial", power=p, seed=11)
    q = np.asarray(s, np.float64) ** p
    q /= q.sum()
    assert np.all(np.diff(np.asarray(idx)) >= 0) and 0 <= int(idx.min()) and int(idx.max()) < 30
    assert_close(sc, 1.0 / np.sqrt(r * q[np.asarray(idx)]), what="scales")


@pytest.mark.parametrize("method", ["multinomial_nr", "uniform_nr"])
def test_select_without_replacement(platform, method):
    s = jax.random.uniform(jax.random.PRNGKey(5), (40,)) + 0.1
    sel = jax.jit(lambda s, i: ops.select(s, i, rank=8, method=method, seed=3, layer_id=2))
    idx, sc = sel(s, jnp.uint32(1))
    assert len(set(np.asarray(idx).tolist())) == 8 and np.all(np.diff(np.asarray(idx)) > 0)
    assert np.all(np.asarray(sc) >= 1.0 - 1e-6)  # inclusion probabilities are at most 1
    if method == "uniform_nr":
        assert_close(sc, np.full(8, np.sqrt(40 / 8)), what="scales")
    again, _ = sel(s, jnp.uint32(1))
    np.testing.assert_array_equal(idx, again)  # a function of its inputs only
    other = [np.asarray(sel(s, jnp.uint32(i))[0]) for i in range(2, 6)]
    assert any((o != np.asarray(idx)).any() for o in other)  # the refresh index matters


def adam_reference(g, m, v, step, b1, b2, eps):
    """New M, V and the update direction u after Adam step `step + 1`."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    t = step + 1
    u = (m / (1 - b1 ** t)) / (jnp.sqrt(v / (1 - b2 ** t)) + eps)
    return m, v, u


@pytest.mark.parametrize("w_dtype", DTYPES)
@pytest.mark.parametrize("side", ["rows", "cols"])
@pytest.mark.parametrize("decay_mode", ["selected", "dense"])
def test_sparse_adamw_step(platform, w_dtype, side, decay_mode):
    k = keys(6, 6)
    mm, nn, r = 20, 12, 5
    d, kk = (mm, nn) if side == "rows" else (nn, mm)
    w = random(k[0], (mm, nn), w_dtype)
    idx = jnp.sort(jax.random.permutation(k[1], d)[:r]).astype(jnp.int32)
    sc = jax.random.uniform(k[2], (r,), minval=0.5, maxval=2.0)
    g = random(k[3], (r, kk))
    m0 = random(k[4], (r, kk)) * 0.1
    v0 = jnp.abs(random(k[5], (r, kk))) * 0.1
    lr, wd, alpha, b1, b2, eps = 0.01, 0.1, 0.5, 0.9, 0.99, 1e-6
    f = jax.jit(lambda *a: ops.sparse_adamw_step(
        *a, side=side, beta1=b1, beta2=b2, eps=eps, weight_decay=wd, decay_mode=decay_mode,
        alpha=alpha))
    w1, m1, v1, step1, skipped = f(w, idx, sc, g, m0, v0, jnp.int32(3), lr)
    mr, vr, u = adam_reference(g, m0, v0, 3, b1, b2, eps)
    wf = w.astype(jnp.float32)
    wp = projected_rows(wf, side)
    if decay_mode == "dense":
        wp = wp * (1 - lr * wd)
        want = wp.at[idx].add(-lr * alpha * sc[:, None] * u)
    else:
        want = wp.at[idx].set(wp[idx] * (1 - lr * wd) - lr * alpha * sc[:, None] * u)
    want = want if side == "rows" else want.T
    assert_close(m1, mr, what="M")
    assert_close(v1, vr, what="V")
    assert_close(w1, want, w_dtype, scale=float(jnp.abs(wf).max()), what="w")
    assert int(step1) == 4 and int(skipped) == 0
    if decay_mode == "selected":  # rows that were not selected are bit-for-bit untouched
        untouched = np.setdiff1d(np.arange(d), np.asarray(idx))
        np.testing.assert_array_equal(np.asarray(projected_rows(w1, side))[untouched],
                                      np.asarray(projected_rows(w, side))[untouched])


def test_sparse_adamw_step_skips_non_finite(platform):
    w = random(jax.random.PRNGKey(7), (8, 6))
    idx, sc = jnp.array([1, 4], jnp.int32), jnp.ones(2)
    g = jnp.ones((2, 6)).at[1, 2].set(jnp.nan)
    m0, v0 = jnp.full((2, 6), 0.5), jnp.full((2, 6), 0.25)
    w1, m1, v1, step, skipped = ops.sparse_adamw_step(w, idx, sc, g, m0, v0, jnp.int32(2), 0.1,
                                                      side="rows")
    assert int(skipped) == 1 and int(step) == 2
    np.testing.assert_array_equal(w1, w)
    np.testing.assert_array_equal(m1, m0)
    np.testing.assert_array_equal(v1, v0)


def test_state_refresh(platform):
    k = keys(8, 2)
    m0, v0 = random(k[0], (4, 3)), jnp.abs(random(k[1], (4, 3)))
    old, new = jnp.array([1, 3, 5, 7], jnp.int32), jnp.array([0, 3, 7, 9], jnp.int32)
    m1, v1, st = ops.state_refresh(old, new, m0, v0, jnp.int32(6), refresh_mode="carry")
    want_m = jnp.zeros_like(m0).at[1].set(m0[1]).at[2].set(m0[3])
    want_v = jnp.zeros_like(v0).at[1].set(v0[1]).at[2].set(v0[3])
    np.testing.assert_array_equal(m1, want_m)
    np.testing.assert_array_equal(v1, want_v)
    assert int(st) == 6
    m2, v2, st2 = ops.state_refresh(old, new, m0, v0, jnp.int32(6), refresh_mode="reset")
    assert not np.asarray(m2).any() and not np.asarray(v2).any() and int(st2) == 0


@pytest.mark.parametrize("w_dtype", DTYPES)
def test_adamw_step_matches_optax(platform, w_dtype):
    k = keys(9, 2)
    w = random(k[0], (7, 5), w_dtype)
    lr, wd = 0.01, 0.05
    tx = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd)
    ref_w, ref_state = w.astype(jnp.float32), tx.init(w.astype(jnp.float32))
    m, v, step = jnp.zeros((7, 5)), jnp.zeros((7, 5)), jnp.int32(0)
    f = jax.jit(lambda *a: ops.adamw_step(*a, weight_decay=wd, decay_mode="selected"))
    for i in range(3):
        g = random(jax.random.fold_in(k[1], i), (7, 5))
        w, m, v, step, skipped = f(w, g.astype(w_dtype), m, v, step, lr)
        upd, ref_state = tx.update(g.astype(w_dtype).astype(jnp.float32), ref_state, ref_w)
        ref_w = optax.apply_updates(ref_w, upd).astype(w_dtype).astype(jnp.float32)
        assert int(skipped) == 0
    assert int(step) == 3
    assert_close(w, ref_w, w_dtype, what="w")


def test_bad_rank_raises_at_trace_time():
    x, dy = jnp.ones((4, 6)), jnp.ones((4, 5))
    with pytest.raises(GrassError) as e:
        ops.sparse_grad(x, dy, jnp.zeros((9,), jnp.int32), jnp.ones(9), side="rows")
    assert e.value.status == 2 and e.value.name == "GRASS_ERROR_INVALID_VALUE"
    assert "r = 9" in e.value.message and "exceeds" in e.value.message


def test_bad_indices_raise_at_run_time():
    x, dy = random(jax.random.PRNGKey(0), (4, 6)), random(jax.random.PRNGKey(1), (4, 5))
    for idx, words in (([0, 7], "outside"), ([3, 1], "sorted")):
        with pytest.raises(jax.errors.JaxRuntimeError) as e:
            jax.block_until_ready(jax.jit(lambda x, dy, i: ops.sparse_grad(
                x, dy, i, jnp.ones(2), side="rows"))(x, dy, jnp.array(idx, jnp.int32)))
        err = GrassError.from_runtime_error(e.value)
        assert err is not None, str(e.value)
        assert err.status == 2 and err.name == "GRASS_ERROR_INVALID_VALUE"
        assert "indices" in err.message and words in err.message


def test_bad_enum_and_dtype():
    with pytest.raises(ValueError, match="method"):
        ops.select(jnp.ones(5), jnp.uint32(0), rank=2, method="best")
    with pytest.raises(TypeError, match="float32, bfloat16 or float16"):
        ops.row_scores(jnp.ones((3, 4), jnp.float64 if jax.config.jax_enable_x64 else jnp.int32),
                       jnp.ones((3, 2), jnp.int32))


def test_vmap_is_a_loop_of_calls(platform):
    k = keys(10, 3)
    x, dy = random(k[0], (3, 8, 6)), random(k[1], (3, 8, 10))
    idx, sc = jnp.array([0, 4, 9], jnp.int32), jnp.array([1.0, 2.0, 0.5])
    got = jax.vmap(lambda x, dy: ops.sparse_grad(x, dy, idx, sc, side="rows"))(x, dy)
    for i in range(3):
        assert_close(got[i], ops.sparse_grad(x[i], dy[i], idx, sc, side="rows"), what="g")
    w = random(k[2], (3, 10, 6))
    g = random(k[0], (3, 3, 6))
    z = jnp.zeros((3, 3, 6))
    wv = jax.vmap(lambda w, g: ops.sparse_adamw_step(w, idx, sc, g, z[0], z[0], 0, 0.1,
                                                     side="rows")[0])(w, g)
    for i in range(3):
        want = ops.sparse_adamw_step(w[i], idx, sc, g[i], z[0], z[0], 0, 0.1, side="rows")[0]
        assert_close(wv[i], want, what="w")
