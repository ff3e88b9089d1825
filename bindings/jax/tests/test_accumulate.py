"""Gradient accumulation over micro-batches into the compressed (r x k) gradients: equal to one
large batch (bit for bit where every sum is exact, within f32 rounding otherwise), with rows
chosen once per refresh and kept by every micro-batch, and nothing m x n carried."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_close
import grass_jax as gj
import model

MICRO, SIZE = 4, 4   # 4 micro-batches of 4 = one batch of 16


def accumulated_step(opt, loss_fn):
    """One optimizer step over MICRO micro-batches: the first decides the refresh, the others
    use its rows (micro_projections); a lax.scan carries the compressed sums."""
    @jax.jit
    def step(params, state, xs):
        proj = opt.projections(params, state)
        first = jax.tree_util.tree_map(lambda a: a[0], xs)
        rest = jax.tree_util.tree_map(lambda a: a[1:], xs)
        _, grads = opt.value_and_grad(loss_fn)(params, proj, *first)
        acc = opt.accumulate(None, grads)
        later = opt.micro_projections(proj, acc)

        def body(acc, batch):
            _, g = opt.value_and_grad(loss_fn)(params, later, *batch)
            return opt.accumulate(acc, g), None

        acc, _ = jax.lax.scan(body, acc, rest)
        return opt.step(params, opt.mean(acc, MICRO), state), acc

    return step


def large_step(opt, loss_fn):
    @jax.jit
    def step(params, state, batch):
        proj = opt.projections(params, state)
        _, grads = opt.value_and_grad(loss_fn)(params, proj, *batch)
        return opt.step(params, grads, state)

    return step


def split(batch):
    return jax.tree_util.tree_map(lambda a: a.reshape((MICRO, SIZE) + a.shape[1:]), batch)


def test_accumulation_equals_one_large_batch():
    """uniform_nr selects without looking at the scores, so the rows agree with the large
    batch's at refreshes too; the rest is the same compressed AdamW on the same mean
    gradient, summed in another order."""
    kw = dict(grass_mask=model.GRASS_MASK, rank=4, refresh_every=3, method="uniform_nr",
              scaling="none")
    params = model.init_params(jax.random.PRNGKey(0))
    a_opt, b_opt = gj.grass_adamw(1e-2, **kw), gj.grass_adamw(1e-2, **kw)
    acc_step, big_step = accumulated_step(a_opt, model.loss_fn), large_step(b_opt, model.loss_fn)
    a, sa = params, a_opt.init(params)
    b, sb = params, b_opt.init(params)
    for i in range(7):
        batch = model.batch(jax.random.PRNGKey(i), MICRO * SIZE)
        (a, sa), acc = acc_step(a, sa, split(batch))
        b, sb = big_step(b, sb, batch)
    assert acc[0]["up"] is None and acc[1]["up"].sink.shape == (4, 48)  # r x k, no m x n
    for name in ("up", "down"):
        np.testing.assert_array_equal(sa.layers[name].indices, sb.layers[name].indices)
    for name in params:
        assert_close(a[name], b[name], scale=1.0, what=name)


def test_accumulation_is_bit_identical_when_the_sums_are_exact():
    """A linear layer with small-integer inputs and a loss whose cotangents are powers of two:
    every product and sum is exact in f32, so the accumulated gradient is the large batch's
    bit for bit, and so is the step (uniform_nr: the rows do not depend on the scores)."""
    m, n = 12, 10
    k = jax.random.split(jax.random.PRNGKey(1), 3)
    params = {"w": jax.random.normal(k[0], (m, n))}
    x = jax.random.randint(k[1], (MICRO * SIZE, n), -3, 4).astype(jnp.float32)
    c = jax.random.randint(k[2], (MICRO * SIZE, m), -2, 3).astype(jnp.float32)

    def loss_fn(params, proj, x, c):
        y = gj.grass_linear(x, params["w"], proj["w"])
        return jnp.sum(y * c) / x.shape[0]

    kw = dict(grass_mask={"w": True}, rank=4, refresh_every=2, method="uniform_nr",
              scaling="none")
    a_opt, b_opt = gj.grass_adamw(1e-2, **kw), gj.grass_adamw(1e-2, **kw)
    (a, sa), _ = accumulated_step(a_opt, loss_fn)(params, a_opt.init(params), split((x, c)))
    b, sb = large_step(b_opt, loss_fn)(params, b_opt.init(params), (x, c))
    np.testing.assert_array_equal(sa.layers["w"].indices, sb.layers["w"].indices)
    np.testing.assert_array_equal(a["w"], b["w"])
    assert not np.array_equal(a["w"], params["w"])


def test_micro_batches_after_the_first_keep_its_rows():
    """At a refresh step the first micro-batch selects; micro_projections hands its rows to
    the others, which do not refresh (top_r on the first micro-batch's scores)."""
    opt = gj.grass_adamw(1e-2, grass_mask=model.GRASS_MASK, rank=4, method="top_r")
    params = model.init_params(jax.random.PRNGKey(2))
    state = opt.init(params)
    proj = opt.projections(params, state)
    batch = split(model.batch(jax.random.PRNGKey(0), MICRO * SIZE))
    _, grads = opt.value_and_grad(model.loss_fn)(params, proj, batch[0][0], batch[1][0])
    later = opt.micro_projections(proj, grads)
    scores = grads[1]["up"].score_sink
    want = np.sort(np.argsort(-np.asarray(scores), kind="stable")[:4])
    np.testing.assert_array_equal(later["up"].indices, want)
    assert later["up"].refresh is False
    with pytest.raises(ValueError, match="value_and_grad"):
        opt.accumulate(grads, grads[0])
