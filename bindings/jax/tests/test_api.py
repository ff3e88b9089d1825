"""Using grass_adamw as a JAX user would: mistakes are caught early and say how to fix them;
gradient clipping by global norm covers the compressed gradients; the dense optimizer can be
any optax chain, sharing grass's learning-rate schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from conftest import assert_close
import grass_jax as gj
import model


def copy(tree):
    return jax.tree_util.tree_map(jnp.array, tree)


# -- a GRASS weight that bypasses grass_linear --------------------------------------------------

def loss_bypassing_down(params, proj, ids, target):
    x = params["embed"][ids].mean(axis=1)
    h = jax.nn.gelu(gj.grass_linear(x, params["up"], proj["up"]) + params["up_bias"])
    y = h @ params["down"].T  # "down" is in the GRASS mask but used as a plain product
    return jnp.mean((y @ params["head"].T - target) ** 2)


def test_weight_bypassing_grass_linear_is_reported():
    params = model.init_params(jax.random.PRNGKey(0))
    opt = gj.grass_adamw(1e-3, grass_mask=model.GRASS_MASK, rank=4)
    state = opt.init(params)
    ids, target = model.batch(jax.random.PRNGKey(0), 8)

    @jax.jit
    def step(params, state):
        proj = opt.projections(params, state)
        loss, grads = opt.value_and_grad(loss_bypassing_down)(params, proj, ids, target)
        return opt.step(params, grads, state)

    with pytest.raises(ValueError, match=r"\['down'\].*grass_linear.*leave it out of grass_mask"):
        step(params, state)
    # not used at all: the same
    unused = lambda p, proj, ids, t: jnp.mean(
        gj.grass_linear(p["embed"][ids].mean(1), p["up"], proj["up"]) ** 2)
    with pytest.raises(ValueError, match=r"\['down'\]"):
        opt.value_and_grad(unused)(params, opt.projections(params, state), ids, target)
    # the correct loss passes, eagerly and under jit
    opt.value_and_grad(model.loss_fn)(params, opt.projections(params, state), ids, target)


def test_usage_check_sees_through_inner_jit_and_checkpoint():
    """No false alarm where grass_linear sits inside an inner jax.jit (its trace cached after
    the first call, so its Python does not run again) or jax.checkpoint; a bypass inside an
    inner jit is still found."""
    params = model.init_params(jax.random.PRNGKey(0))
    opt = gj.grass_adamw(1e-3, grass_mask=model.GRASS_MASK, rank=4)
    state = opt.init(params)
    ids, target = model.batch(jax.random.PRNGKey(0), 8)
    inner = jax.jit(model.forward)
    losses = {
        "jit": lambda p, proj, ids, t: jnp.mean((inner(p, proj, ids) - t) ** 2),
        "checkpoint": lambda p, proj, ids, t: jnp.mean(
            (jax.checkpoint(model.forward)(p, proj, ids) - t) ** 2),
    }
    for name, f in losses.items():
        for _ in range(2):
            jax.jit(lambda p, s: opt.value_and_grad(f)(p, opt.projections(p, s), ids, target))(
                params, state)
            opt.value_and_grad(f)(params, opt.projections(params, state), ids, target)

    def bypass_in_jit(p, proj, ids, t):
        return jnp.mean((inner(p, {"up": proj["up"], "down": None}, ids) - t) ** 2)

    with pytest.raises(ValueError, match=r"\['down'\]"):
        opt.value_and_grad(bypass_in_jit)(params, opt.projections(params, state), ids, target)


def test_stacked_weight_bypassing_grass_linear_in_scan_is_reported():
    params = {"w": jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8)) * 0.3,
              "v": jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8)) * 0.3}
    opt = gj.grass_adamw(1e-3, grass_mask={"w": True, "v": True}, rank=3, stacked=1)
    state = opt.init(params)
    x = jnp.ones((4, 8))

    def loss(params, proj, x, plain_v):
        def body(h, xs):
            w, v, pw, pv = xs
            h = jnp.tanh(gj.grass_linear(h, w, pw))
            h = h @ v.T if plain_v else gj.grass_linear(h, v, pv)
            return h, None
        h, _ = lax.scan(body, x, (params["w"], params["v"], proj["w"], proj["v"]))
        return jnp.sum(h ** 2)

    proj = opt.projections(params, state)
    jax.jit(opt.value_and_grad(loss), static_argnums=3)(params, proj, x, False)
    with pytest.raises(ValueError, match=r"\['v'\]"):
        jax.jit(opt.value_and_grad(loss), static_argnums=3)(params, proj, x, True)


# -- jax.value_and_grad instead of opt.value_and_grad -------------------------------------------

def test_jax_value_and_grad_is_explained():
    params = model.init_params(jax.random.PRNGKey(3))
    opt = gj.grass_adamw(1e-3, grass_mask=model.GRASS_MASK, rank=4)
    state = opt.init(params)
    ids, target = model.batch(jax.random.PRNGKey(0), 8)
    proj = opt.projections(params, state)
    _, grads = jax.value_and_grad(model.loss_fn)(params, proj, ids, target)
    with pytest.raises(ValueError, match=r"use opt.value_and_grad\(loss_fn\)"):
        opt.step(params, grads, state)
    # a pair without projection gradients is caught as well
    with pytest.raises(ValueError, match="projection_grads"):
        opt.step(params, (grads, grads), state)


# -- construction-time validation -------------------------------------------------------------

@pytest.mark.parametrize("kwargs,words", [
    (dict(method="multinomal_nr"), r"method must be one of .*did you mean 'multinomial_nr'"),
    (dict(method="topr"), r"did you mean 'top_r'"),
    (dict(rank=0), r"rank .* must be an integer >= 1, got 0"),
    (dict(rank=2.5), r"rank .* must be an integer"),
    (dict(refresh_every=0), r"refresh_every must be an integer >= 1"),
    (dict(scaling="unbias"), r"scaling must be one of \['none', 'unbiased'\]"),
    (dict(power=3), r"power must be 1 or 2"),
    (dict(seed=-1), r"seed must be an integer >= 0"),
    (dict(side="row"), r"did you mean 'rows'"),
    (dict(refresh_mode="carry_over"), r"refresh_mode must be one of \['carry', 'reset'\]"),
    (dict(decay_mode="all"), r"decay_mode must be one of"),
    (dict(state_dtype=jnp.float16), r"state_dtype must be float32 or bfloat16"),
    (dict(b2=1.0), r"b2 must lie in \[0.0, 1.0\)"),
    (dict(eps=0.0), r"eps must lie in \(0.0"),
    (dict(max_grad_norm=-1.0), r"max_grad_norm must lie in \(0.0"),
    (dict(dp_scores="mean"), r"dp_scores must be one of"),
    (dict(dense="adamw"), r"dense must be None, an optax GradientTransformation or a function"),
    (dict(dense=lambda lr: "adamw"), r"dense\(learning_rate\) must return"),
])
def test_bad_options_fail_at_construction(kwargs, words):
    with pytest.raises(ValueError, match=words):
        gj.grass_adamw(1e-3, grass_mask=model.GRASS_MASK, **kwargs)


def test_rank_above_the_projected_dimension():
    """Side "auto": rank > d (here "up" is 48 x 24, d = 48; "down" 8 x 48, d = 48): init
    refuses it, naming the weight and the fixes; cap_rank=True caps it per weight and says so."""
    params = model.init_params(jax.random.PRNGKey(4))
    opt = gj.grass_adamw(1e-3, grass_mask=model.GRASS_MASK, rank=64, side="auto")
    with pytest.raises(ValueError, match=r"\['down'\] \(8 x 48, side cols\) has only 48 "
                                         r"columns.*rank <= 48.*cap_rank=True"):
        opt.init(params)
    with pytest.raises(ValueError, match=r"\['up'\] \(48 x 24, side rows\) has only 48 rows"):
        gj.grass_adamw(1e-3, grass_mask={**model.GRASS_MASK, "down": False}, rank=64,
                       side="auto").init(params)
    capped = gj.grass_adamw(1e-3, grass_mask=model.GRASS_MASK, rank=64, cap_rank=True, side="auto")
    state = capped.init(params)
    assert capped.layer_ranks(params) == {"embed": None, "up": 48, "up_bias": None,
                                          "down": 48, "head": None}
    assert state.layers["up"].indices.shape == (48,)
    assert capped.rank == 64  # the rank asked for; each weight's is in layer_ranks
    ok = gj.grass_adamw(1e-3, grass_mask=model.GRASS_MASK, rank=48, side="auto")
    assert ok.layer_ranks(params)["down"] == 48


# -- the rank rule (rank=None, the default) ---------------------------------------------------

# (m, n) weights used as y = x @ w.T, side "cols": d = n = 96, 40, 6, 200, 72 gives the rule's
# (d/2 to a multiple of 8) 48, 24 (20 rounds up to 24), 6 (at most d), 104, 40 (36 rounds up
# to 40).
RULE_SHAPES = {"a": (40, 96), "b": (16, 40), "c": (24, 6), "e": (8, 200), "f": (12, 72)}


def rule_problem(key):
    ks = jax.random.split(key, 3 * len(RULE_SHAPES))
    params, xs, ts = {}, {}, {}
    for i, (name, (m, n)) in enumerate(RULE_SHAPES.items()):
        params[name] = jax.random.normal(ks[3 * i], (m, n)) / np.sqrt(n)
        xs[name] = jax.random.normal(ks[3 * i + 1], (32, n))
        ts[name] = jax.random.normal(ks[3 * i + 2], (32, m))
    params["bias"] = jax.random.normal(ks[0], (7,))
    return params, xs, ts


def rule_loss(params, proj, xs, ts):
    out = sum(jnp.mean((gj.grass_linear(xs[k], params[k], proj[k]) - ts[k]) ** 2)
              for k in RULE_SHAPES)
    return out + jnp.sum(params["bias"] ** 2)


def test_default_rank_is_the_library_rule_per_weight():
    from grass_jax import _lib, consistency
    params, xs, ts = rule_problem(jax.random.PRNGKey(11))
    mask = {k: k != "bias" for k in params}
    opt = gj.grass_adamw(1e-2, grass_mask=mask)
    assert opt.rank is None  # the rule; each weight's rank is in layer_ranks
    ranks = opt.layer_ranks(params)
    want = {k: _lib.default_rank(n) for k, (_, n) in RULE_SHAPES.items()}
    assert want == {"a": 48, "b": 24, "c": 6, "e": 104, "f": 40}  # the documented rule
    assert ranks == {**want, "bias": None}
    state = opt.init(params)
    for k, (m, n) in RULE_SHAPES.items():
        assert state.layers[k].m.shape == (want[k], m)  # r x k, k = m for side cols
        assert state.layers[k].indices.shape == (want[k],)

    @jax.jit
    def step(params, state):
        proj = opt.projections(params, state)
        loss, grads = opt.value_and_grad(rule_loss)(params, proj, xs, ts)
        params, state = opt.step(params, grads, state)
        return params, state, loss

    p, st, first = step(params, state)
    for k in RULE_SHAPES:  # only the selected columns of each weight moved
        moved = np.flatnonzero(np.any(np.asarray(p[k]) != np.asarray(params[k]), axis=0))
        assert set(moved.tolist()) <= set(np.asarray(st.layers[k].indices).tolist())
        assert 0 < len(moved) <= want[k]
    for _ in range(5):
        p, st, loss = step(p, st)
    assert float(loss) < float(first)
    # The fingerprint holds each weight's resolved rank; rank None is -1 in its field.
    fp = consistency.fingerprint(opt, params)
    assert fp[consistency.FIELDS.index("rank")] == -1
    fixed = gj.grass_adamw(1e-2, grass_mask=mask, rank=6)
    assert fixed.layer_ranks(params)["a"] == 6
    assert consistency.fingerprint(fixed, params)[1] != fp[1]


def test_explicit_rank_none_and_bad_ranks():
    params, _, _ = rule_problem(jax.random.PRNGKey(12))
    mask = {k: k != "bias" for k in params}
    assert gj.grass_adamw(1e-2, grass_mask=mask, rank=None).layer_ranks(params)["e"] == 104
    for bad in (0, -8, 2.5, "auto", True):
        with pytest.raises(ValueError, match=r"rank \(the number of selected rows"):
            gj.grass_adamw(1e-2, grass_mask=mask, rank=bad)


# -- gradient clipping by global norm ---------------------------------------------------------

def test_global_norm_covers_compressed_and_dense_gradients():
    params = model.init_params(jax.random.PRNGKey(5))
    opt = gj.grass_adamw(1e-3, grass_mask=model.GRASS_MASK, rank=6)
    state = opt.init(params)
    ids, target = model.batch(jax.random.PRNGKey(0), 16)
    _, grads = opt.value_and_grad(model.loss_fn)(params, opt.projections(params, state), ids,
                                                 target)
    pg, pj = grads
    want = np.sqrt(sum(float(jnp.sum(pj[n].sink ** 2)) for n in ("up", "down")) +
                   sum(float(jnp.sum(pg[n] ** 2)) for n in ("embed", "up_bias", "head")))
    np.testing.assert_allclose(float(opt.global_norm(grads)), want, rtol=1e-5)
    clipped, norm = opt.clip_by_global_norm(grads, 0.1 * want)
    np.testing.assert_allclose(float(norm), want, rtol=1e-5)
    np.testing.assert_allclose(float(opt.global_norm(clipped)), 0.1 * want, rtol=1e-5)
    assert_close(clipped[1]["up"].sink, 0.1 * pj["up"].sink, what="clipped sink")
    assert_close(clipped[0]["head"], 0.1 * pg["head"], what="clipped dense grad")
    same, _ = opt.clip_by_global_norm(grads, 10 * want)  # below the threshold: unchanged
    np.testing.assert_array_equal(same[1]["down"].sink, pj["down"].sink)


def test_max_grad_norm_full_rank_equals_clipped_adamw(platform):
    """At full rank (top_r, no scaling, alpha 1, no row warm-up, side "auto" so that rank 48
    is every row of "up" and every column of "down") the compressed gradient is the whole gradient, so grass
    with max_grad_norm is optax.chain(clip_by_global_norm, adamw) on the whole model; the
    threshold is well below the gradient norm, so every step clips."""
    params = model.init_params(jax.random.PRNGKey(1))
    lr, c = 1e-2, 0.05
    opt = gj.grass_adamw(lr, grass_mask=model.GRASS_MASK, rank=48, method="top_r",
                         scaling="none", side="auto", alpha=1.0, refresh_every=10_000,
                         max_grad_norm=c, row_warmup=0, state_dtype=jnp.float32,
                         dense=lambda lr: optax.adam(lr))
    ref = optax.chain(optax.clip_by_global_norm(c), optax.adam(lr))
    p_ref, s_ref = copy(params), ref.init(params)
    state = opt.init(params)
    step = model.make_step(opt)

    @jax.jit
    def ref_step(p, s, ids, target):
        g = jax.grad(model.loss_fn)(p, None, ids, target)
        u, s = ref.update(g, s, p)
        return optax.apply_updates(p, u), s, optax.tree.norm(g)

    for i in range(8):
        ids, target = model.batch(jax.random.PRNGKey(100 + i), 32)
        params, state, _ = step(params, state, ids, target)
        p_ref, s_ref, gnorm = ref_step(p_ref, s_ref, ids, target)
        assert float(gnorm) > 2 * c
    for name in params:
        assert_close(params[name], p_ref[name], scale=5.0, what=name)


def test_clipping_keeps_non_finite_steps_skipped():
    params = model.init_params(jax.random.PRNGKey(6))
    opt = gj.grass_adamw(1e-2, grass_mask=model.GRASS_MASK, rank=4, max_grad_norm=1.0)
    state = opt.init(params)
    step = model.make_step(opt, donate=False)
    ids, target = model.batch(jax.random.PRNGKey(0), 16)
    new_params, new_state, _ = step(params, state, ids, target.at[0, 0].set(jnp.nan))
    assert int(opt.skipped(new_params, new_state)["up"]) == 1
    np.testing.assert_array_equal(new_params["up"], params["up"])


# -- the dense optimizer: any optax chain, the schedule given once ----------------------------

def test_dense_factory_shares_the_schedule():
    """dense=lambda lr: ... gets grass's own schedule: the same run as passing the schedule to
    both; an optax chain works as the dense part."""
    sched = optax.warmup_cosine_decay_schedule(0.0, 1e-2, 3, 20)
    params = model.init_params(jax.random.PRNGKey(7))

    def run(opt, steps=6):
        p, s = copy(params), opt.init(params)
        step = model.make_step(opt)
        for i in range(steps):
            p, s, _ = step(p, s, *model.batch(jax.random.PRNGKey(i), 16))
        return p

    kw = dict(grass_mask=model.GRASS_MASK, rank=4, refresh_every=4)
    twice = run(gj.grass_adamw(sched, dense=optax.adamw(sched, weight_decay=0.1), **kw))
    once = run(gj.grass_adamw(sched, dense=lambda lr: optax.adamw(lr, weight_decay=0.1), **kw))
    for name in params:
        np.testing.assert_array_equal(once[name], twice[name])
    chained = run(gj.grass_adamw(sched, dense=lambda lr: optax.chain(
        optax.clip_by_global_norm(1e-3), optax.adamw(lr, weight_decay=0.1)), **kw))
    assert not np.array_equal(chained["head"], once["head"])  # the clip changed the dense part
