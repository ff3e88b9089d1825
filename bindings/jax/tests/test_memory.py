"""Evidence that a jitted GRASS train step holds no m x n weight-gradient buffer: the compiled
HLO makes no m x n value other than W itself (in place, aliased through the FFI call), and
XLA's memory analysis shows a footprint below optax.adamw's. Runs on CPU here and on the GPU
where there is one (that is the run that matters for the paper's memory claim)."""

import re

import jax
import jax.numpy as jnp
import optax

import grass_jax as gj
from conftest import skip_hlo_structure_on_gpu

# Large enough that libgrass's score chunks (at most 2M elements of G on CPU) are a fraction of
# m x n; the steps are only compiled, never run.
M, N, B, R = 4096, 1024, 64, 32


def grass_step_compiled(refresh=None):
    params = {"w": jnp.full((M, N), 0.01, jnp.float32)}
    opt = gj.grass_adamw(1e-3, grass_mask={"w": True}, rank=R, refresh_every=100)
    state = opt.init(params)

    def loss_fn(p, proj, x):
        return jnp.mean(jnp.tanh(gj.grass_linear(x, p["w"], proj["w"])) ** 2)

    def step(p, s, x):
        proj = opt.projections(p, s, refresh=refresh)
        loss, grads = opt.value_and_grad(loss_fn)(p, proj, x)
        p, s = opt.step(p, grads, s)
        return p, s, loss

    x = jnp.ones((B, N), jnp.float32)
    return jax.jit(step, donate_argnums=(0, 1)).lower(params, state, x).compile()


def adamw_step_compiled():
    params = {"w": jnp.full((M, N), 0.01, jnp.float32)}
    tx = optax.adamw(1e-3)
    state = tx.init(params)

    def step(p, s, x):
        loss, g = jax.value_and_grad(lambda p: jnp.mean(jnp.tanh(x @ p["w"].T) ** 2))(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s, loss

    x = jnp.ones((B, N), jnp.float32)
    return jax.jit(step, donate_argnums=(0, 1)).lower(params, state, x).compile()


def mn_producers(hlo):
    """Opcodes of the instructions (fusions looked into) whose result is an m x n array."""
    shape = re.compile(r"=\s*f32\[%d,%d\]\{[^}]*\}\s+([\w-]+)\(" % (M, N))
    return [m.group(1) for line in hlo.splitlines() if (m := shape.search(line))]


def test_no_weight_gradient_in_hlo(platform):
    skip_hlo_structure_on_gpu(platform)
    hlo = grass_step_compiled().as_text()
    ops = mn_producers(hlo)
    assert set(ops) <= {"parameter", "get-tuple-element"}, ops
    # and the only m x n *value* handed around is W, updated in place by the FFI call
    assert re.search(r"custom-call\(", hlo)
    dense_ops = mn_producers(adamw_step_compiled().as_text())
    assert set(dense_ops) - {"parameter", "get-tuple-element"}, \
        "sanity: the dense step should form an m x n gradient"


def test_no_copy_of_w_when_the_backward_reads_it(platform):
    """Layers whose input depends on a parameter need dX = dY·W, a read of W that the in-place
    update must follow; the optimizer orders it (see ops.sparse_adamw_step's `after`), else XLA
    copies all of W (twice, with donation) before updating it. The same holds for a dense
    weight stepped by grass's dense AdamW."""
    skip_hlo_structure_on_gpu(platform)
    D = 96  # outputs of a dense layer after the GRASS one
    params = {"w": jnp.full((M, N), 0.01, jnp.float32), "s": jnp.ones((N,), jnp.float32),
              "d": jnp.full((D, M), 0.01, jnp.float32)}
    opt = gj.grass_adamw(1e-3, grass_mask={"w": True, "s": False, "d": False}, rank=R,
                         refresh_every=100)
    state = opt.init(params)

    def loss_fn(p, proj, x):
        h = jnp.tanh(gj.grass_linear(x * p["s"], p["w"], proj["w"]))
        return jnp.mean(jnp.tanh(h @ p["d"].T) ** 2)

    def step(p, s, x):
        proj = opt.projections(p, s)
        loss, grads = opt.value_and_grad(loss_fn)(p, proj, x)
        p, s = opt.step(p, grads, s)
        return p, s, loss

    x = jnp.ones((B, N), jnp.float32)
    hlo = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, x).compile().as_text()
    ops = mn_producers(hlo)
    assert set(ops) <= {"parameter", "get-tuple-element"}, ops
    assert not re.search(r"=\s*f32\[%d,%d\]\{[^}]*\}\s+copy\(" % (D, M), hlo), "the dense weight was copied"
    assert re.search(r"custom-call\(", hlo)


def footprint(c):
    a = c.memory_analysis()
    return a.argument_size_in_bytes + a.output_size_in_bytes - a.alias_size_in_bytes + \
        a.temp_size_in_bytes, a.temp_size_in_bytes


def test_memory_below_adamw(platform):
    g_total, g_temp = footprint(grass_step_compiled())
    a_total, a_temp = footprint(adamw_step_compiled())
    mn_bytes = M * N * 4
    assert g_temp < mn_bytes, f"GRASS step scratch {g_temp} B >= one m x n gradient {mn_bytes} B"
    _, plain_temp = footprint(grass_step_compiled(refresh=False))
    # what is left is activations (y and dy, b x m each)
    assert plain_temp < mn_bytes // 4, f"a step without refresh uses {plain_temp} B of scratch"
    # W + r x k states + activations, against W + two m x n moments (+ a gradient)
    assert g_total < a_total - 1.5 * mn_bytes, (g_total, a_total)
    print(f"[{platform}] GRASS step {g_total} B (temp {g_temp}), optax.adamw step {a_total} B "
          f"(temp {a_temp})")


def test_stacked_scan_step_holds_no_weight_gradient(platform):
    """L layers stacked for lax.scan: no L x m x n value is made besides the stacked weight
    itself, which one FFI call steps in place, slice by slice; the only m x n values are the
    slices of W the loop reads (the forward product and dX = dY·W), never a gradient."""
    L, m = 3, 1024
    params = {"w": jnp.full((L, m, m), 0.01, jnp.float32)}
    opt = gj.grass_adamw(1e-3, grass_mask={"w": True}, rank=R, refresh_every=100,
                         stacked=1)
    state = opt.init(params)

    def loss_fn(p, proj, x):
        def body(h, xs):
            return jnp.tanh(gj.grass_linear(h, *xs)), None
        h, _ = jax.lax.scan(body, x, (p["w"], proj["w"]))
        return jnp.mean(h ** 2)

    def step(p, s, x):
        proj = opt.projections(p, s)
        loss, grads = opt.value_and_grad(loss_fn)(p, proj, x)
        p, s = opt.step(p, grads, s)
        return p, s, loss

    x = jnp.ones((B, m), jnp.float32)
    c = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, x).compile()
    _, temp = footprint(c)
    assert temp < L * m * m * 4, f"stacked step scratch {temp} B >= the stacked gradient"
    skip_hlo_structure_on_gpu(platform)  # the memory analysis above holds on every backend
    hlo = c.as_text()
    value = r"%([\w.-]+)\s*=\s*f32\[{}\]\{{[^}}]*\}}\s+([\w-]+)\("
    stacked = re.compile(value.format(f"{L},{m},{m}"))
    ops = [mm.group(2) for line in hlo.splitlines() if (mm := stacked.search(line))]
    assert set(ops) <= {"parameter", "get-tuple-element", "tuple", "bitcast"}, ops
    assert re.search(r"f32\[%d,%d,%d\][^=]*=?[^\n]*custom-call\(%%p" % (L, m, m), hlo), \
        "the stacked weight should go straight from the parameter into the FFI step"
    single = re.compile(value.format(f"{m},{m}"))
    made = [(mm.group(1), mm.group(2)) for line in hlo.splitlines()
            if (mm := single.search(line))]
    assert all(op in ("parameter", "get-tuple-element", "bitcast") or
               name.startswith("dynamic-slice") for name, op in made), made
