"""grass_adamw as an optax GradientTransformation: update(grads, state, params) ->
(updates, state) from ordinary jax.grad gradients, in optax.chain, optax.apply_updates,
Flax's TrainState and optax.inject_hyperparams; the calls it cannot honour (MultiSteps, the
compressed-gradient pair) are refused with the call to use instead."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import assert_close
import grass_jax as gj
import model

KW = dict(grass_mask=model.GRASS_MASK, rank=4, refresh_every=3, method="top_r", scaling="none")


def loss_layers(params, proj, ids, target):
    """model.loss_fn with the GRASS weights through grass_linear (compressed gradients)."""
    return model.loss_fn(params, proj, ids, target)


def loss_dense(params, ids, target):
    return model.loss_fn(params, None, ids, target)


def run_step(opt, params, steps):
    state = opt.init(params)

    @jax.jit
    def step(params, state, ids, target):
        proj = opt.projections(params, state)
        _, grads = opt.value_and_grad(loss_layers)(params, proj, ids, target)
        return opt.step(params, grads, state)

    for i in range(steps):
        params, state = step(params, state, *model.batch(jax.random.PRNGKey(i), 16))
    return params, state


def run_update(tx, params, steps):
    state = tx.init(params)

    @jax.jit
    def step(params, state, ids, target):
        grads = jax.grad(loss_dense)(params, ids, target)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for i in range(steps):
        params, state = step(params, state, *model.batch(jax.random.PRNGKey(i), 16))
    return params, state


def test_update_from_full_gradients_equals_step_with_grass_layers():
    """The same rows (top_r on the same scores), the same compressed AdamW: the optax form on
    jax.grad's gradients and `step` on grass_linear's compressed ones agree over refreshes."""
    params = model.init_params(jax.random.PRNGKey(0))
    a, a_state = run_step(gj.grass_adamw(1e-2, **KW), params, 7)
    b, b_state = run_update(gj.grass_adamw(1e-2, **KW), params, 7)
    for name in ("up", "down"):
        np.testing.assert_array_equal(a_state.layers[name].indices,
                                      b_state.layers[name].indices)
    for name in params:
        assert_close(b[name], a[name], scale=1.0, what=name)
    assert int(b_state.count) == 7


def test_chain_with_clipping_before_grass():
    params = model.init_params(jax.random.PRNGKey(1))
    grass = gj.grass_adamw(1e-2, **KW)
    chained, _ = run_update(optax.chain(optax.clip_by_global_norm(0.05), grass), params, 4)

    # The same by hand: clip the full gradients, then grass's update (the whole step in one
    # jit, as run_update's: compiled apart, XLA may round the gradient or its global norm
    # differently, and Adam's normalisation turns that last bit into ~2e-5 of a weight whose
    # gradient is near eps).
    state = grass.init(params)
    p = params

    @jax.jit
    def by_hand(p, state, ids, target):
        g = jax.grad(loss_dense)(p, ids, target)
        g, _ = optax.clip_by_global_norm(0.05).update(g, optax.EmptyState())
        u, state = grass.update(g, state, p)
        return optax.apply_updates(p, u), state

    for i in range(4):
        p, state = by_hand(p, state, *model.batch(jax.random.PRNGKey(i), 16))
    for name in params:
        assert_close(chained[name], p[name], scale=1.0, what=name)
    assert not np.array_equal(chained["up"], params["up"])


def test_flax_train_state_apply_gradients():
    train_state = pytest.importorskip("flax.training.train_state")
    params = model.init_params(jax.random.PRNGKey(2))
    tx = gj.grass_adamw(1e-2, **KW)
    ts = train_state.TrainState.create(apply_fn=None, params=params, tx=tx)

    @jax.jit
    def train_step(ts, ids, target):
        grads = jax.grad(loss_dense)(ts.params, ids, target)
        return ts.apply_gradients(grads=grads)

    for i in range(3):
        ts = train_step(ts, *model.batch(jax.random.PRNGKey(i), 16))
    want, _ = run_update(gj.grass_adamw(1e-2, **KW), params, 3)
    for name in params:
        assert_close(ts.params[name], want[name], scale=1.0, what=name)
    assert int(ts.step) == 3


def test_inject_hyperparams_learning_rate():
    params = model.init_params(jax.random.PRNGKey(3))
    with pytest.raises(ValueError, match=r"rank.*must be static.*STATIC_ARGS"):
        optax.inject_hyperparams(gj.grass_adamw)(learning_rate=1e-2, **KW).init(params)
    make = optax.inject_hyperparams(gj.grass_adamw, static_args=gj.grass_adamw.STATIC_ARGS)
    tx = make(learning_rate=1e-2, **KW)
    state = tx.init(params)
    assert set(state.hyperparams) == {"learning_rate"}
    state.hyperparams["learning_rate"] = jnp.asarray(3e-3)   # as users change it mid-run
    grads = jax.grad(loss_dense)(params, *model.batch(jax.random.PRNGKey(0), 16))
    u, state = jax.jit(tx.update)(grads, state, params)
    want, _ = gj.grass_adamw(3e-3, **KW).update(grads, gj.grass_adamw(3e-3, **KW).init(params),
                                                params)
    for name in params:
        assert_close(u[name], want[name], scale=1e-3, what=name)


def test_multisteps_is_refused_at_init_naming_the_accumulation_calls():
    params = model.init_params(jax.random.PRNGKey(4))
    with pytest.raises(ValueError, match=r"MultiSteps.*full-size.*opt\.accumulate"):
        optax.MultiSteps(gj.grass_adamw(1e-2, **KW), every_k_schedule=2).init(params)


def test_update_refuses_the_compressed_pair_and_missing_params():
    params = model.init_params(jax.random.PRNGKey(5))
    opt = gj.grass_adamw(1e-2, **KW)
    state = opt.init(params)
    proj = opt.projections(params, state)
    _, grads = opt.value_and_grad(loss_layers)(params, proj, *model.batch(jax.random.PRNGKey(0),
                                                                         16))
    with pytest.raises(ValueError, match=r"opt\.step\(params, grads, state\)"):
        opt.update(grads, state, params)
    with pytest.raises(ValueError, match=r"needs params"):
        opt.update(grads[0], state)
    with pytest.raises(ValueError, match=r"does not average over axis_name"):
        gj.grass_adamw(1e-2, axis_name="data", **KW).update(grads[0], state, params)
