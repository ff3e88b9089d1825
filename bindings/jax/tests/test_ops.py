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


def adam_reference(g, m, v, row_steps, b1, b2, eps):
    """New M, V and the update direction u after one Adam step of each row, row j at its own
    step row_steps[j] + 1 (its own bias corrections)."""
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    t = (jnp.asarray(row_steps, jnp.float32) + 1)[:, None]
    u = (m / (1 - b1 ** t)) / (jnp.sqrt(v / (1 - b2 ** t)) + eps)
    return m, v, u


@pytest.mark.parametrize("w_dtype", DTYPES)
@pytest.mark.parametrize("side", ["rows", "cols"])
@pytest.mark.parametrize("decay_mode", ["selected", "dense"])
@pytest.mark.parametrize("row_warmup", [0, 6])
def test_sparse_adamw_step(platform, w_dtype, side, decay_mode, row_warmup):
    """Rows at different step counts (as after carry refreshes): row j's update uses its own
    bias corrections 1 - β^(t_j + 1), and every count advances by one; with a row warm-up W,
    row j's step is scaled by min(1, (t_j + 1) / W)."""
    k = keys(6, 6)
    mm, nn, r = 20, 12, 5
    d, kk = (mm, nn) if side == "rows" else (nn, mm)
    w = random(k[0], (mm, nn), w_dtype)
    idx = jnp.sort(jax.random.permutation(k[1], d)[:r]).astype(jnp.int32)
    sc = jax.random.uniform(k[2], (r,), minval=0.5, maxval=2.0)
    g = random(k[3], (r, kk))
    m0 = random(k[4], (r, kk)) * 0.1
    v0 = jnp.abs(random(k[5], (r, kk))) * 0.1
    # a fresh row (0), young rows whose bias corrections differ a lot, and an old one
    steps0 = jnp.array([0, 3, 1, 40, 7], jnp.int32)
    lr, wd, alpha, b1, b2, eps = 0.01, 0.1, 0.5, 0.9, 0.99, 1e-6
    f = jax.jit(lambda *a: ops.sparse_adamw_step(
        *a, side=side, beta1=b1, beta2=b2, eps=eps, weight_decay=wd, decay_mode=decay_mode,
        alpha=alpha, row_warmup=row_warmup))
    w1, m1, v1, steps1, skipped = f(w, idx, sc, g, m0, v0, steps0, lr)
    mr, vr, u = adam_reference(g, m0, v0, steps0, b1, b2, eps)
    if row_warmup:
        u = u * jnp.minimum(1.0, (steps0 + 1) / row_warmup)[:, None]
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
    assert steps1.shape == (r,) and steps1.dtype == jnp.int32
    np.testing.assert_array_equal(steps1, np.asarray(steps0) + 1)
    assert int(skipped) == ops.STEP_APPLIED == 0
    if decay_mode == "selected":  # rows that were not selected are bit-for-bit untouched
        untouched = np.setdiff1d(np.arange(d), np.asarray(idx))
        np.testing.assert_array_equal(np.asarray(projected_rows(w1, side))[untouched],
                                      np.asarray(projected_rows(w, side))[untouched])


def test_sparse_adamw_step_per_row_bias_corrections_matter(platform):
    """The per-row counts are used, not one count for all rows: the same g from zero moments
    stepped at counts 0 and 1000 gives different updates, each equal to its own Adam reference
    (a shared count would move both rows alike). A repeated index adds both rows' updates into
    one row of W, each with its own corrections."""
    w = jnp.zeros((6, 4))
    idx = jnp.array([1, 3, 3], jnp.int32)
    g = jnp.tile(jnp.array([[0.5, -1.0, 2.0, 0.25]]), (3, 1))
    z = jnp.zeros((3, 4))
    steps0 = jnp.array([0, 1000, 0], jnp.int32)
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.1
    w1, m1, v1, steps1, skipped = ops.sparse_adamw_step(
        w, idx, jnp.ones(3), g, z, z, steps0, lr, side="rows", beta1=b1, beta2=b2, eps=eps)
    _, _, u = adam_reference(g, z, z, steps0, b1, b2, eps)
    assert_close(w1[1], -lr * u[0], what="row 1 (fresh)")
    assert_close(w1[3], -lr * (u[1] + u[2]), what="row 3 (counts 1000 and 0)")
    # A fresh row from zero moments moves by lr·sign(g). Zero moments under count 1000 (what
    # carry did to entering rows with one count per layer) move ~(1-β1)/sqrt(1-β2) = 3.2x
    # (here, with 1-β2^1001 = 0.63: 2.5x) as far.
    assert_close(w1[1], -lr * jnp.sign(g[0]), what="fresh step")
    assert float(jnp.abs(u[1]).min()) > 2 * float(jnp.abs(u[0]).max())
    np.testing.assert_array_equal(steps1, [1, 1001, 1])
    assert int(skipped) == 0


@pytest.mark.parametrize("bad", ["grad", "lr"])
def test_sparse_adamw_step_skips_non_finite(platform, bad):
    w = random(jax.random.PRNGKey(7), (8, 6))
    idx, sc = jnp.array([1, 4], jnp.int32), jnp.ones(2)
    g = jnp.ones((2, 6))
    lr = 0.1
    if bad == "grad":
        g = g.at[1, 2].set(jnp.nan)
    else:
        lr = jnp.inf
    m0, v0 = jnp.full((2, 6), 0.5), jnp.full((2, 6), 0.25)
    steps0 = jnp.array([2, 9], jnp.int32)
    w1, m1, v1, steps, skipped = ops.sparse_adamw_step(w, idx, sc, g, m0, v0, steps0, lr,
                                                       side="rows")
    assert int(skipped) == ops.STEP_SKIPPED_NONFINITE == 1
    np.testing.assert_array_equal(steps, steps0)
    np.testing.assert_array_equal(w1, w)
    np.testing.assert_array_equal(m1, m0)
    np.testing.assert_array_equal(v1, v0)


def test_sparse_adamw_step_bad_indices(platform):
    """Unsorted indices: a CPU context fails the call; a CUDA one skips the step with outcome 2
    (it checks on the device, without waiting) and changes nothing."""
    w = random(jax.random.PRNGKey(11), (8, 6))
    idx = jnp.array([4, 1], jnp.int32)
    m0, v0, steps0 = jnp.full((2, 6), 0.5), jnp.full((2, 6), 0.25), jnp.array([3, 0], jnp.int32)
    f = jax.jit(lambda w, idx, m, v, st: ops.sparse_adamw_step(w, idx, jnp.ones(2),
                                                               jnp.ones((2, 6)), m, v, st, 0.1,
                                                               side="rows"))
    if platform == "cpu":
        with pytest.raises(jax.errors.JaxRuntimeError) as e:
            jax.block_until_ready(f(w, idx, m0, v0, steps0))
        err = GrassError.from_runtime_error(e.value)
        assert err is not None and err.name == "GRASS_ERROR_INVALID_VALUE", str(e.value)
        assert "indices" in err.message
        return
    w1, m1, v1, steps, skipped = f(w, idx, m0, v0, steps0)
    assert int(skipped) == ops.STEP_SKIPPED_BAD_INDICES == 2
    np.testing.assert_array_equal(steps, steps0)
    np.testing.assert_array_equal(w1, w)
    np.testing.assert_array_equal(m1, m0)


def test_row_steps_must_have_one_count_per_row():
    w, idx, g = jnp.zeros((8, 6)), jnp.array([1, 4, 5], jnp.int32), jnp.ones((3, 6))
    z = jnp.zeros((3, 6))
    for bad in (jnp.int32(0), jnp.zeros((2,), jnp.int32), jnp.zeros((3, 1), jnp.int32)):
        with pytest.raises(ValueError, match=r"row_steps must be int32\[3\]"):
            ops.sparse_adamw_step(w, idx, jnp.ones(3), g, z, z, bad, 0.1, side="rows")
        with pytest.raises(ValueError, match=r"row_steps must be int32\[3\]"):
            ops.state_refresh(idx, idx, z, z, bad, refresh_mode="carry")


def test_handlers_check_the_row_steps_length():
    """The FFI handlers themselves refuse a row_steps buffer that is not r long, naming it
    (a caller of the FFI targets that bypasses grass_jax.ops gets an error, not a read past
    the buffer)."""
    from grass_jax import _lib
    _lib.register()
    r, k = 3, 6
    w, idx, g, z = jnp.zeros((8, k)), jnp.array([1, 4, 5], jnp.int32), jnp.ones((r, k)), \
        jnp.zeros((r, k))
    short = jnp.zeros((r - 1,), jnp.int32)
    sd = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt)
    step_results = (sd((8, k), jnp.float32), sd((r, k), jnp.float32), sd((r, k), jnp.float32),
                    sd((r - 1,), jnp.int32), sd((), jnp.int32),
                    sd((_lib.sparse_adamw_workspace(8, k, _lib.SIDE_ROWS, r),), jnp.uint8))
    refresh_results = (sd((r, k), jnp.float32), sd((r, k), jnp.float32), sd((r - 1,), jnp.int32),
                       sd((_lib.state_refresh_workspace(1, _lib.DTYPE_F32, r, k),), jnp.uint8))
    calls = [
        lambda: jax.ffi.ffi_call("grass_sparse_adamw_step", step_results,
                                 input_output_aliases={0: 0, 4: 1, 5: 2, 6: 3})(
            w, idx, jnp.ones(r), g, z, z, short, jnp.float32(0.1), jnp.float32(0), side=np.int32(0),
            beta1=np.float32(0.9), beta2=np.float32(0.999), eps=np.float32(1e-8),
            weight_decay=np.float32(0), decay_mode=np.int32(1), alpha=np.float32(1),
            row_warmup=np.int32(0), lr=np.float32(1)),
        lambda: jax.ffi.ffi_call("grass_state_refresh", refresh_results,
                                 input_output_aliases={2: 0, 3: 1, 4: 2})(
            idx, idx, z, z, short, refresh_mode=np.int32(1)),
    ]
    for call in calls:
        with pytest.raises(jax.errors.JaxRuntimeError, match=r"row_steps must hold 3 int32"):
            jax.block_until_ready(jax.jit(call)())


def carry_reference(old, new, m, v, row_steps):
    """numpy: row b of the result is the row of old's copy of new[b] (repeats paired in order)
    with its step count, or zeros and count 0 for an entering index."""
    m, v, row_steps = np.asarray(m), np.asarray(v), np.asarray(row_steps)
    m1, v1, s1 = np.zeros_like(m), np.zeros_like(v), np.zeros_like(row_steps)
    unused = list(range(len(old)))
    for b, i in enumerate(np.asarray(new)):
        match = [a for a in unused if old[a] == i]
        if match:
            a = match[0]
            unused.remove(a)
            m1[b], v1[b], s1[b] = m[a], v[a], row_steps[a]
    return m1, v1, s1


@pytest.mark.parametrize("state_dtype", [jnp.float32, jnp.bfloat16])
def test_state_refresh(platform, state_dtype):
    """carry moves each staying index's M, V rows and step count to its new position and zeroes
    those of entering indices; reset zeroes everything."""
    k = keys(8, 2)
    m0 = random(k[0], (4, 3), state_dtype)
    v0 = jnp.abs(random(k[1], (4, 3), state_dtype))
    old, new = jnp.array([1, 3, 5, 7], jnp.int32), jnp.array([0, 3, 7, 9], jnp.int32)
    steps0 = jnp.array([6, 4, 11, 2], jnp.int32)
    f = jax.jit(lambda *a: ops.state_refresh(*a, refresh_mode="carry"))
    m1, v1, st = f(old, new, m0, v0, steps0)
    want_m = jnp.zeros_like(m0).at[1].set(m0[1]).at[2].set(m0[3])
    want_v = jnp.zeros_like(v0).at[1].set(v0[1]).at[2].set(v0[3])
    np.testing.assert_array_equal(m1, want_m)
    np.testing.assert_array_equal(v1, want_v)
    np.testing.assert_array_equal(st, [0, 4, 2, 0])  # 3 keeps 4, 7 keeps 2; 0 and 9 enter
    m2, v2, st2 = ops.state_refresh(old, new, m0, v0, steps0, refresh_mode="reset")
    assert not np.asarray(m2).any() and not np.asarray(v2).any() and not np.asarray(st2).any()
    assert st2.shape == (4,)


def test_state_refresh_carry_matches_reference(platform):
    """Random selections with repeated indices (as multinomial with replacement draws them)."""
    r, kk, d = 12, 5, 16
    f = jax.jit(lambda *a: ops.state_refresh(*a, refresh_mode="carry"))
    rng = np.random.default_rng(0)
    for trial in range(20):
        old = np.sort(rng.integers(0, d, r)).astype(np.int32)
        new = np.sort(rng.integers(0, d, r)).astype(np.int32)
        if trial == 0:
            new = old.copy()  # every row stays: nothing moves
        m0 = rng.normal(size=(r, kk)).astype(np.float32)
        v0 = np.abs(rng.normal(size=(r, kk))).astype(np.float32)
        steps0 = rng.integers(0, 100, r).astype(np.int32)
        got = f(jnp.asarray(old), jnp.asarray(new), jnp.asarray(m0), jnp.asarray(v0),
                jnp.asarray(steps0))
        want = carry_reference(old, new, m0, v0, steps0)
        for name, a, b in zip(("M", "V", "row_steps"), got, want):
            np.testing.assert_array_equal(a, b, err_msg=f"trial {trial}: {name}")
        if trial == 0:
            np.testing.assert_array_equal(got[2], steps0)


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
    steps = jnp.array([[0, 2, 5], [1, 1, 1], [9, 0, 3]], jnp.int32)
    wv, _, _, sv, _ = jax.vmap(lambda w, g, st: ops.sparse_adamw_step(
        w, idx, sc, g, z[0], z[0], st, 0.1, side="rows"))(w, g, steps)
    np.testing.assert_array_equal(sv, steps + 1)
    for i in range(3):
        want = ops.sparse_adamw_step(w[i], idx, sc, g[i], z[0], z[0], steps[i], 0.1,
                                     side="rows")[0]
        assert_close(wv[i], want, what="w")
