"""The optimizer over many steps: a model trains, full rank equals AdamW, checkpoints resume
the same trajectory, a static refresh schedule equals the traced one, non-finite steps skip."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import assert_close
import grass_jax as gj
import model


def copy(tree):
    return jax.tree_util.tree_map(jnp.array, tree)


def test_small_model_trains(platform):
    params = model.init_params(jax.random.PRNGKey(0))
    opt = gj.grass_adamw(3e-3, grass_mask=model.GRASS_MASK, rank=8, refresh_every=50,
                         dense=optax.adamw(3e-3))
    state = opt.init(params)
    step = model.make_step(opt)
    losses = []
    for i in range(300):
        ids, target = model.batch(jax.random.PRNGKey(i), 64)
        params, state, loss = step(params, state, ids, target)
        losses.append(float(loss))
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.3 * first, f"loss fell only from {first:.4f} to {last:.4f}"
    assert int(state.count) == 300
    assert int(state.layers["up"].refresh_count) == 6
    assert not any(int(x) for x in jax.tree_util.tree_leaves(opt.skipped(params, state)))


def test_full_rank_top_r_equals_adamw(platform):
    """r = d (side "auto": the 48 rows of "up", the 48 columns of "down"), top_r, no scaling,
    alpha 1, no row warm-up and one refresh: every row is selected, so the compressed step is
    plain AdamW (the
    built-in dense AdamW serves the other leaves)."""
    params = model.init_params(jax.random.PRNGKey(1))
    lr = 1e-2
    opt = gj.grass_adamw(lr, grass_mask=model.GRASS_MASK, rank=model.HIDDEN, method="top_r",
                         scaling="none", side="auto", alpha=1.0, refresh_every=10_000,
                         weight_decay=0.01, row_warmup=0, state_dtype=jnp.float32,
                         decay_mode="selected")
    ref = optax.adamw(lr, weight_decay=0.01)
    p_ref, s_ref = copy(params), ref.init(params)
    state = opt.init(params)
    step = model.make_step(opt)

    @jax.jit
    def ref_step(p, s, ids, target):
        g = jax.grad(model.loss_fn)(p, None, ids, target)
        u, s = ref.update(g, s, p)
        return optax.apply_updates(p, u), s

    for i in range(12):
        ids, target = model.batch(jax.random.PRNGKey(100 + i), 32)
        params, state, _ = step(params, state, ids, target)
        p_ref, s_ref = ref_step(p_ref, s_ref, ids, target)
    for name in params:
        # Adam normalises each element, so f32 rounding in tiny gradients shows up at ~lr·1e-3
        assert_close(params[name], p_ref[name], scale=5.0, what=name)


def run(opt, params, state, steps, start, refresh=None):
    plain = {r: model.make_step(opt, refresh=r) for r in (True, False)} if refresh else None
    traced = model.make_step(opt)
    losses = []
    for i in range(start, start + steps):
        ids, target = model.batch(jax.random.PRNGKey(i), 32)
        f = plain[opt.refresh_due_host(i)] if refresh else traced
        params, state, loss = f(params, state, ids, target)
        losses.append(float(loss))
    return params, state, losses


def test_checkpoint_round_trip_resumes_the_trajectory(platform, tmp_path):
    opt = gj.grass_adamw(5e-3, grass_mask=model.GRASS_MASK, rank=6, refresh_every=7,
                         refresh_mode="carry", dense=optax.adamw(5e-3))
    params = model.init_params(jax.random.PRNGKey(2))
    params, state, _ = run(opt, params, opt.init(params), 10, 0)
    gj.save_state(tmp_path / "state.npz", state)
    gj.save_state(tmp_path / "params.npz", params)
    a_params, a_state, a_losses = run(opt, copy(params), copy(state), 10, 10)

    fresh = model.init_params(jax.random.PRNGKey(99))
    r_params = gj.load_state(tmp_path / "params.npz", fresh)
    r_state = gj.load_state(tmp_path / "state.npz", opt.init(fresh))
    b_params, b_state, b_losses = run(opt, r_params, r_state, 10, 10)
    assert a_losses == b_losses
    for x, y in zip(jax.tree_util.tree_leaves((a_params, a_state)),
                    jax.tree_util.tree_leaves((b_params, b_state))):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="expected"):
        gj.load_state(tmp_path / "state.npz", gj.grass_adamw(
            1e-3, grass_mask=model.GRASS_MASK, rank=5, dense=optax.adamw(1e-3)).init(fresh))
    # the per-row counts came back (carry: they differ between rows by now)
    again = gj.load_state(tmp_path / "state.npz", opt.init(fresh))
    assert np.unique(np.asarray(state.layers["up"].row_steps)).size > 1
    np.testing.assert_array_equal(again.layers["up"].row_steps, state.layers["up"].row_steps)
    # a grass_jax 0.1 checkpoint (one scalar Adam step per GRASS layer) is refused, saying why
    old = state._replace(layers={name: (ls._replace(row_steps=ls.row_steps.max())
                                        if ls is not None else None)
                                 for name, ls in state.layers.items()})
    gj.save_state(tmp_path / "old.npz", old)
    with pytest.raises(ValueError, match="one step count per state row"):
        gj.load_state(tmp_path / "old.npz", opt.init(fresh))


def test_static_refresh_schedule_equals_traced(platform):
    opt = gj.grass_adamw(5e-3, grass_mask=model.GRASS_MASK, rank=6, refresh_every=4)
    params = model.init_params(jax.random.PRNGKey(3))
    a = run(opt, copy(params), opt.init(params), 9, 0)
    b = run(opt, copy(params), opt.init(params), 9, 0, refresh=True)
    np.testing.assert_allclose(a[2], b[2], rtol=1e-6)
    np.testing.assert_array_equal(a[1].layers["down"].indices, b[1].layers["down"].indices)


def test_non_finite_gradient_skips_the_step(platform):
    opt = gj.grass_adamw(1e-2, grass_mask=model.GRASS_MASK, rank=4)
    params = model.init_params(jax.random.PRNGKey(4))
    state = opt.init(params)
    step = model.make_step(opt, donate=False)
    ids, target = model.batch(jax.random.PRNGKey(0), 16)
    params, state, _ = step(params, state, ids, target)
    new_params, new_state, _ = step(params, state, ids, target.at[0, 0].set(jnp.nan))
    skipped = opt.skipped(new_params, new_state)
    assert int(skipped["up"]) == 1 and int(skipped["down"]) == 1  # STEP_SKIPPED_NONFINITE
    np.testing.assert_array_equal(new_params["up"], params["up"])
    for name in ("up", "down"):
        np.testing.assert_array_equal(new_state.layers[name].row_steps,
                                      state.layers[name].row_steps)
        np.testing.assert_array_equal(new_state.layers[name].m, state.layers[name].m)


def test_learning_rate_schedule(platform):
    sched = optax.linear_schedule(1e-2, 0.0, 5)
    opt = gj.grass_adamw(sched, grass_mask=model.GRASS_MASK, rank=4, refresh_every=100)
    params = model.init_params(jax.random.PRNGKey(5))
    params, state, _ = run(opt, params, opt.init(params), 5, 0)
    before = copy(params)
    params, state, _ = run(opt, params, state, 1, 5)  # lr(5) = 0: nothing moves
    np.testing.assert_array_equal(params["up"], before["up"])


def test_bf16_weights_and_state(platform):
    """bf16 weights and state with the default selection; lr 1.2e-2 at the default alpha 0.25
    steps the projected weights by 3e-3 and the dense ones by 1.2e-2."""
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16),
                                    model.init_params(jax.random.PRNGKey(6)))
    opt = gj.grass_adamw(1.2e-2, grass_mask=model.GRASS_MASK, rank=8, refresh_every=20,
                         state_dtype=jnp.bfloat16)
    state = opt.init(params)
    step = model.make_step(opt)
    losses = []
    for i in range(60):
        ids, target = model.batch(jax.random.PRNGKey(i), 64)
        params, state, loss = step(params, state, ids, target.astype(jnp.bfloat16))
        losses.append(float(loss))
    assert state.layers["up"].m.dtype == jnp.bfloat16
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_mask_as_a_function_of_path_and_leaf():
    params = model.init_params(jax.random.PRNGKey(7))
    by_name = lambda path, leaf: path[-1].key in ("up", "down")
    a = gj.grass_adamw(1e-3, grass_mask=by_name, rank=4).init(params)
    b = gj.grass_adamw(1e-3, grass_mask=model.GRASS_MASK, rank=4).init(params)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    # "up" is (HIDDEN, DIM); the default side "cols" projects its input columns, so k = HIDDEN
    assert a.layers["up"].m.shape == (4, model.HIDDEN)
    with pytest.raises(ValueError, match="2-D"):
        gj.grass_adamw(1e-3, grass_mask=lambda p, x: True, rank=4).init(params)


def expected_row_steps(history):
    """numpy reference of the per-row Adam counts under refresh_mode "carry": `history` is
    [(indices after the step, whether the step was applied)] per step, from the first. Row j
    counts the applied steps for which indices[j] has been selected without a break (an index
    that stays selected across a refresh keeps its count; one that enters starts at 0)."""
    counts, prev = None, None
    for idx, applied in history:
        idx = [int(i) for i in idx]
        if prev is None or idx != prev:  # a refresh chose (possibly) new rows
            old = dict(zip(prev, counts)) if prev is not None else {}
            counts = [old.get(i, 0) for i in idx]  # distinct indices: multinomial_nr
        if applied:
            counts = [c + 1 for c in counts]
        prev = idx
    return np.array(counts, np.int32)


@pytest.mark.parametrize("refresh_mode", ["carry", "reset"])
def test_row_steps_follow_the_rows(platform, refresh_mode):
    """With "carry", after several refreshes each row's Adam count equals the number of applied
    steps its index has been selected in a row, so rows that stay selected keep their bias
    corrections and entering ones start fresh; with "reset" every count is the number of
    applied steps since the last refresh. A skipped (non-finite) step counts for no row. The
    model trains either way."""
    K = 4
    # row_warmup 0: with K = 4 < W a reset row would never reach a full step
    opt = gj.grass_adamw(1e-2, grass_mask=model.GRASS_MASK, rank=12, refresh_every=K,
                         refresh_mode=refresh_mode, row_warmup=0)
    params = model.init_params(jax.random.PRNGKey(8))
    state = opt.init(params)
    step = model.make_step(opt, donate=False)
    history = {"up": [], "down": []}
    losses, kept, entered = [], 0, 0
    for i in range(48):
        ids, target = model.batch(jax.random.PRNGKey(500 + i), 64)
        nan_step = i == 13  # not a refresh step (13 % K != 0)
        if nan_step:
            target = target.at[0, 0].set(jnp.nan)
        before = state
        params, state, loss = step(params, state, ids, target)
        skipped = opt.skipped(params, state)
        for name in history:
            assert int(skipped[name]) == (1 if nan_step else 0), (i, name)
            history[name].append((np.asarray(state.layers[name].indices), not nan_step))
            if i % K == 0 and i > 0:
                old = set(np.asarray(before.layers[name].indices).tolist())
                new = np.asarray(state.layers[name].indices).tolist()
                kept += sum(j in old for j in new)
                entered += sum(j not in old for j in new)
        if not nan_step:
            losses.append(float(loss))
        if i % K == K - 1:  # the last step before each refresh
            for name in history:
                got = np.asarray(state.layers[name].row_steps)
                if refresh_mode == "carry":
                    want = expected_row_steps(history[name])
                else:
                    want = np.full_like(got, sum(a for _, a in history[name][-K:]))
                np.testing.assert_array_equal(got, want, err_msg=f"{name} after step {i}")
    assert int(state.layers["up"].refresh_count) == 48 // K
    # the test means something: refreshes kept some rows and brought in others
    assert kept > 0 and entered > 0, (kept, entered)
    if refresh_mode == "carry":
        counts = np.asarray(state.layers["up"].row_steps)
        assert counts.max() > K and counts.min() < counts.max(), counts
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), (losses[:5], losses[-5:])
