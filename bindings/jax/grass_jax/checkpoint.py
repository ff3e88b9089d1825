"""Saving and restoring optimizer state (or any pytree of arrays) with numpy's .npz format.

The file holds the leaves in flattened order; the structure comes from `like` (e.g. a fresh
`opt.init(params)`) on load, and every leaf's shape and dtype are checked against it. numpy
has no bfloat16: .npz stores a bf16 leaf's bits as 2-byte void, read back as bf16 where `like`
has bf16."""

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
            want = jnp.asarray(ref).dtype
            if want == jnp.bfloat16 and a.dtype.kind == "V" and a.dtype.itemsize == 2:
                a = a.view(jnp.bfloat16)  # .npz keeps bf16's bits under numpy's void type
            if a.shape != jnp.shape(ref) or a.dtype != want:
                hint = ""
                if a.shape == () and a.dtype == np.int32 and want == jnp.int32 and \
                        jnp.ndim(ref) == 1:
                    hint = (" (a scalar where one int32 per row is expected: a GRASS layer's "
                            "Adam step as grass_jax 0.1 saved it; 0.2 keeps one step count "
                            "per state row, GrassLayerState.row_steps)")
                raise ValueError(f"leaf {i}: {a.dtype}{a.shape} in {path}, expected "
                                 f"{want}{jnp.shape(ref)}{hint}")
            out.append(jnp.asarray(a))
    return treedef.unflatten(out)
