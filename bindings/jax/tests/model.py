"""A small model for the training tests: an embedding, two GRASS linear layers, a bias and a
dense output head; the target is a fixed random teacher."""

import jax
import jax.numpy as jnp

import grass_jax as gj

VOCAB, DIM, HIDDEN, OUT = 32, 24, 48, 8


def init_params(key):
    k = jax.random.split(key, 4)
    return {
        "embed": jax.random.normal(k[0], (VOCAB, DIM)) * 0.5,
        "up": jax.random.normal(k[1], (HIDDEN, DIM)) / jnp.sqrt(DIM),
        "up_bias": jnp.zeros((HIDDEN,)),
        "down": jax.random.normal(k[2], (OUT, HIDDEN)) / jnp.sqrt(HIDDEN),
        "head": jax.random.normal(k[3], (OUT, OUT)) / jnp.sqrt(OUT),
    }


GRASS_MASK = {"embed": False, "up": True, "up_bias": False, "down": True, "head": False}


def batch(key, size):
    """Token ids (size, 4) and regression targets (size, OUT) from a fixed teacher."""
    tk, xk = jax.random.split(jax.random.PRNGKey(1234)), key
    teacher = jax.random.normal(tk[0], (VOCAB, OUT))
    ids = jax.random.randint(xk, (size, 4), 0, VOCAB)
    return ids, jnp.tanh(teacher[ids].sum(axis=1))


def forward(params, proj, ids):
    x = params["embed"][ids].mean(axis=1)
    if proj is None:  # the plain model, for references
        h = jax.nn.gelu(x @ params["up"].T + params["up_bias"])
        y = h @ params["down"].T
    else:
        h = jax.nn.gelu(gj.grass_linear(x, params["up"], proj["up"]) + params["up_bias"])
        y = gj.grass_linear(h, params["down"], proj["down"])
    return y @ params["head"].T


def loss_fn(params, proj, ids, target):
    return jnp.mean((forward(params, proj, ids) - target) ** 2)


def make_step(opt, refresh=None, donate=True):
    def step(params, state, ids, target):
        proj = opt.projections(params, state, refresh=refresh)
        loss, grads = opt.value_and_grad(loss_fn)(params, proj, ids, target)
        params, state = opt.step(params, grads, state)
        return params, state, loss

    return jax.jit(step, donate_argnums=(0, 1) if donate else ())
