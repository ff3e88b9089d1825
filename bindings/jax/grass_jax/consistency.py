"""Checks that the processes of a multi-process run build the same GRASS optimizer.

Every process of a data-parallel run must choose the same rows at the same steps: the same
weight shapes, rank, seed, selection, refresh schedule and step counter. When they differ the
run either diverges silently (another seed selects other rows) or hangs (one process enters a
refresh's score all-reduce while another does not, or the collectives see different shapes).
So before that can happen the processes compare a fingerprint of their optimizer: a fixed
number of int32 fields, one all-gather across processes (fixed shape, so it completes even
when the processes disagree), and every process raises `ProcessMismatchError` naming the
fields and the values each process has.

`grass_adamw.init` runs the check when `jax.process_count() > 1`; run it again at a refresh
(or after loading a checkpoint) with `opt.check_processes(params, state)`.
"""

import zlib

import jax
import numpy as np

FIELDS = ("GRASS layers", "weight shapes", "rank", "seed", "refresh_every", "selection",
          "AdamW hyper-parameters", "data-parallel options", "step count", "refresh counts")

_INT31 = (1 << 31) - 1


class ProcessMismatchError(ValueError):
    """The processes of a multi-process run disagree on the optimizer (see module doc)."""


def _hash(*values):
    return zlib.crc32(repr(values).encode()) & _INT31


def _small(value):
    """The value itself when it fits in an int32 field, else its hash."""
    v = int(value)
    return v if 0 <= v <= _INT31 else _hash(v)


def fingerprint(opt, params, state=None):
    """The optimizer's fingerprint: np.int32[len(FIELDS)] (step count and refresh counts -1
    without a state)."""
    _, _, configs = opt.layer_configs(params)
    layers = [c for c in configs if c is not None]
    shapes = [(c.stack, c.m, c.n, c.side, c.d, c.k, c.rank, c.layer_id) for c in layers]
    sel = opt.selection
    # opt.rank None (the rank rule) is -1 here; each weight's resolved rank is in `shapes`.
    rank = -1 if opt.rank is None else opt.rank
    fp = [len(layers), _hash(shapes), rank, _small(sel["seed"]), opt.refresh_every,
          _hash(sel["method"], sel["power"], sel["scaling"], opt.side),
          _hash(sorted(opt.adam.items()), opt.alpha, opt.refresh_mode, str(opt.state_dtype),
                opt.max_grad_norm, opt.row_warmup, str(opt.dense_state_dtype)),
          _hash(opt.axis_name, opt.dp_scores, opt.dp_chunk_elems,
                getattr(opt, "shard_state", False)),
          -1, -1]
    if state is not None:
        fp[8] = _small(np.asarray(jax.device_get(_local(state.count))))
        counts = [int(np.asarray(jax.device_get(_local(ls.refresh_count))))
                  for ls in jax.tree_util.tree_leaves(
                      state.layers, is_leaf=lambda x: hasattr(x, "refresh_count"))
                  if hasattr(ls, "refresh_count")]
        fp[9] = _hash(counts)
    return np.asarray(fp, np.int32)


def _local(x):
    """A replicated scalar's value on this process (a global array may span processes)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return x.addressable_data(0)
    return x


def mismatches(table):
    """For an all-gathered table (processes x fields): one line per field that differs."""
    table = np.asarray(table)
    lines = []
    for f, name in enumerate(FIELDS):
        col = table[:, f]
        if (col == col[0]).all():
            continue
        hashed = name in ("weight shapes", "selection", "AdamW hyper-parameters",
                          "data-parallel options", "refresh counts")
        groups = {}
        for p, v in enumerate(col.tolist()):
            groups.setdefault(v, []).append(p)
        parts = [f"process{'es' if len(ps) > 1 else ''} {', '.join(map(str, ps))}"
                 + ("" if hashed else f": {v}") for v, ps in groups.items()]
        lines.append(f"{name} ({' vs '.join(parts)})"
                     + (" [fingerprints differ]" if hashed else ""))
    return lines


def check_processes(opt, params, state=None):
    """Raises ProcessMismatchError in every process when the processes disagree on the
    optimizer (module doc). One process: nothing to compare."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    table = multihost_utils.process_allgather(fingerprint(opt, params, state))
    lines = mismatches(np.asarray(table).reshape(jax.process_count(), len(FIELDS)))
    if lines:
        raise ProcessMismatchError(
            f"grass_adamw: the {jax.process_count()} processes disagree, so they would select "
            f"different rows or wait on different collectives (this is process "
            f"{jax.process_index()}): " + "; ".join(lines))
