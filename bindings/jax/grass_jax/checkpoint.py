"""Saving and restoring optimizer state (or any pytree of arrays) with numpy's .npz format.

The file holds the leaves in flattened order; the structure comes from `like` (e.g. a fresh
`opt.init(params)`) on load, and every leaf's shape and dtype are checked against it."""

import jax
import jax.numpy as jnp
import numpy as np


def save_state(path, state):
    leaves = jax.tree_util.tree_leaves(state)
    np.savez(path, **{f"leaf_{i:05d}": np.asarray(jax.device_get(x)) for i, x in
                      enumerate(leaves)})


def load_state(path, like):
    leaves, treedef = jax.tree_util.tree_flatten(like)
    with np.load(path) as f:
        if len(f.files) != len(leaves):
            raise ValueError(f"{path} holds {len(f.files)} arrays, the state has {len(leaves)}")
        out = []
        for i, ref in enumerate(leaves):
            a = f[f"leaf_{i:05d}"]
            if a.shape != jnp.shape(ref) or a.dtype != jnp.asarray(ref).dtype:
                raise ValueError(f"leaf {i}: {a.dtype}{a.shape} in {path}, expected "
                                 f"{jnp.asarray(ref).dtype}{jnp.shape(ref)}")
            out.append(jnp.asarray(a))
    return treedef.unflatten(out)
