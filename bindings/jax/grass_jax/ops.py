"""The layer-1 ops of libgrass as JAX functions (one `jax.ffi.ffi_call` each).

Every op runs on CPU and on CUDA with the same code. Scratch is an extra result of the call,
sized at trace time by libgrass's *_workspace_size query (the largest over the platforms JAX
has here, so that one traced call lowers to either); shapes, ranks and dtypes are checked by
those queries too, so most bad arguments raise `GrassError` at trace time. Ops that update
state in place alias their inputs to their outputs (`input_output_aliases`): donate the
buffers to `jax.jit` to have the update happen without a copy.

vmap: every op batches as a loop of calls, one per batch element (vmap_method="sequential").
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from . import _lib

_VMAP = "sequential"

# Outcomes a step writes to its `skipped` result (grass.h's GRASS_STEP_*).
STEP_APPLIED = _lib.STEP_APPLIED                          # 0: the step was applied
STEP_SKIPPED_NONFINITE = _lib.STEP_SKIPPED_NONFINITE      # 1: non-finite gradient or lr
STEP_SKIPPED_BAD_INDICES = _lib.STEP_SKIPPED_BAD_INDICES  # 2: unsorted / out-of-range indices
STEP_SKIPPED_BAD_STEP_COUNT = _lib.STEP_SKIPPED_BAD_STEP_COUNT  # 3: a negative step count


def _dtype_code(dtype, what):
    dtype = jnp.dtype(dtype)
    codes = {jnp.dtype(jnp.float32): _lib.DTYPE_F32, jnp.dtype(jnp.bfloat16): _lib.DTYPE_BF16,
             jnp.dtype(jnp.float16): _lib.DTYPE_F16}
    if dtype not in codes:
        raise TypeError(f"{what} must be float32, bfloat16 or float16, got {dtype}")
    return codes[dtype]


def _state_code(dtype):
    code = _dtype_code(dtype, "optimizer states")
    if code == _lib.DTYPE_F16:
        raise TypeError("optimizer states must be float32 or bfloat16, got float16")
    return code


def _side_code(side):
    if isinstance(side, str):
        if side not in _lib.SIDES:
            raise ValueError(f"side must be one of {sorted(_lib.SIDES)}, got {side!r}")
        return _lib.SIDES[side]
    return int(side)


def _enum(table, value, what):
    if isinstance(value, str):
        if value not in table:
            raise ValueError(f"{what} must be one of {sorted(table)}, got {value!r}")
        return table[value]
    return int(value)


def resolve_side(m, n, side="auto"):
    """(side, d, k) for an m x n weight: side is "rows" or "cols"; compressed tensors are d-long
    scores and r x k gradients and states."""
    s, d, k = _lib.resolve_side(int(m), int(n), _side_code(side))
    return ("rows" if s == _lib.SIDE_ROWS else "cols"), d, k


def _activations(x, dy, what):
    if x.ndim != 2 or dy.ndim != 2 or x.shape[0] != dy.shape[0]:
        raise ValueError(f"{what}: x must be (b, n) and dy (b, m), got {x.shape} and {dy.shape}")
    if x.dtype != dy.dtype:
        raise TypeError(f"{what}: x and dy must have one dtype, got {x.dtype} and {dy.dtype}")
    b, n = x.shape
    return b, n, dy.shape[1], _dtype_code(x.dtype, "x")


def _ws(nbytes):
    return jax.ShapeDtypeStruct((int(nbytes),), jnp.uint8)


def row_scores(x, dy, side="auto"):
    """Exact norms of the rows (side rows) or columns (side cols) of G = dyᵀx: f32[d]."""
    _lib.register()
    b, n, m, dt = _activations(x, dy, "row_scores")
    s, d, _ = _lib.resolve_side(m, n, _side_code(side))
    ws = _lib.scores_workspace(m, n, b, s, dt)
    scores, _ = jax.ffi.ffi_call(
        "grass_row_scores",
        (jax.ShapeDtypeStruct((d,), jnp.float32), _ws(ws)),
        vmap_method=_VMAP,
    )(x, dy, side=np.int32(s))
    return scores


def select(scores, refresh_index, *, rank, method="multinomial_nr", power=2,
           scaling="unbiased", seed=0, layer_id=0):
    """Chooses `rank` of the len(scores) indices: (indices i32[rank] sorted, scales f32[rank]).
    The choice is a function of (scores, seed, layer_id, refresh_index) only, identical on
    every device. `refresh_index` is a uint32 scalar array (it may be traced)."""
    _lib.register()
    if scores.ndim != 1 or scores.dtype != jnp.float32:
        raise ValueError(f"scores must be a float32 vector, got {scores.dtype}{scores.shape}")
    d, r = scores.shape[0], int(rank)
    ws = _lib.select_workspace(d, r)
    indices, scales, _ = jax.ffi.ffi_call(
        "grass_select",
        (jax.ShapeDtypeStruct((r,), jnp.int32), jax.ShapeDtypeStruct((r,), jnp.float32), _ws(ws)),
        vmap_method=_VMAP,
    )(scores, jnp.asarray(refresh_index, jnp.uint32),
      rank=np.int64(r), method=np.int32(_enum(_lib.METHODS, method, "method")),
      power=np.int32(power), scaling=np.int32(_enum(_lib.SCALINGS, scaling, "scaling")),
      seed=np.uint64(seed), layer_id=np.uint32(layer_id))
    return indices, scales


def sparse_grad(x, dy, indices, scales, side="auto"):
    """The compressed gradient g = PᵀG (f32[r, k]) straight from x (b, n) and dy (b, m):
    row j = scales[j] · Σ_t A[t, indices[j]] · B[t, :], (A, B) = (dy, x) for rows, (x, dy) for
    cols. The m x n gradient is never formed."""
    _lib.register()
    b, n, m, dt = _activations(x, dy, "sparse_grad")
    s, _, k = _lib.resolve_side(m, n, _side_code(side))
    r = indices.shape[0]
    ws = _lib.sparse_grad_workspace(m, n, b, s, r, dt)
    g, _ = jax.ffi.ffi_call(
        "grass_sparse_grad",
        (jax.ShapeDtypeStruct((r, k), jnp.float32), _ws(ws)),
        vmap_method=_VMAP,
    )(x, dy, jnp.asarray(indices, jnp.int32), jnp.asarray(scales, jnp.float32), side=np.int32(s))
    return g


def _hyper(beta1, beta2, eps, weight_decay, decay_mode):
    return dict(beta1=np.float32(beta1), beta2=np.float32(beta2), eps=np.float32(eps),
                weight_decay=np.float32(weight_decay),
                decay_mode=np.int32(_enum(_lib.DECAY_MODES, decay_mode, "decay_mode")))


def _lr(lr):
    # The learning rate travels as a buffer (libgrass's lr_scale, with lr = 1), so a schedule
    # that depends on the step counter needs no recompilation.
    return jnp.asarray(lr, jnp.float32).reshape(())


def _step(step):
    return jnp.asarray(step, jnp.int32).reshape(())


def _row_steps(row_steps, r, what, stack=()):
    """The per-row Adam step counts as i32[*stack, r]. A scalar is not broadcast: a state that
    kept one step count per layer (grass_jax 0.1) must be converted knowingly (see
    GrassLayerState)."""
    row_steps = jnp.asarray(row_steps)
    want = tuple(stack) + (r,)
    if row_steps.shape != want or not jnp.issubdtype(row_steps.dtype, jnp.integer):
        raise ValueError(f"{what}: row_steps must be int32{list(want)}, one Adam step count per "
                         f"state row (r = {r}), got {row_steps.dtype}{list(row_steps.shape)}")
    return row_steps.astype(jnp.int32)


def sparse_adamw_step(w, indices, scales, g, m_state, v_state, row_steps, lr, *, side="auto",
                      beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                      decay_mode="selected", alpha=1.0, row_warmup=0, after=None):
    """The compressed AdamW step, in place: returns (w, m_state, v_state, row_steps, skipped).

    w (m x n) gets `-lr·α·ρ_j·u_j` added into row / column indices[j]; M and V (r x k, f32 or
    bf16) advance. `row_steps` (i32[r]) counts the Adam steps of each state row since it was
    zeroed: every count is incremented and row j uses its own bias corrections
    1 - β1^t_j and 1 - β2^t_j (t_j = row_steps[j] + 1), so rows that entered the selection at
    different refreshes (refresh_mode "carry") each start like a fresh Adam parameter.
    `row_warmup` W > 0 scales row j's step by min(1, t_j / W) (0: no ramp; grass_adamw passes
    the library's default).

    A stacked weight w (*stack, m, n) steps each layer slice with its own selection: indices,
    scales and row_steps are then (*stack, r), g, M and V (*stack, r, k) and `skipped` has
    shape `stack` (one call; every slice updated in place).

    `skipped` (i32 scalar) is the step's outcome: 0 (STEP_APPLIED) applied; 1
    (STEP_SKIPPED_NONFINITE) skipped because g held a NaN or infinity or lr was not a finite
    non-negative number; 2 (STEP_SKIPPED_BAD_INDICES) skipped because the indices were not
    sorted within [0, d); 3 (STEP_SKIPPED_BAD_STEP_COUNT) skipped because a count was
    negative (2 and 3 on CUDA only: on CPU such inputs make the call fail). A skipped step
    changes nothing else, row_steps included. w, M, V and row_steps are aliased to the outputs.

    `after` (any array, never read) orders the call after whatever computed it. XLA updates w
    in place only where every other read of w (the forward product, the backward's dX = dY·W)
    is known to come first; where it cannot tell, it copies all of w first. Pass a value that
    depends on those reads — the optimizer passes one element of every gradient — so that no
    copy is made."""
    _lib.register()
    if w.ndim < 2:
        raise ValueError(f"w must be 2-D (or stacked: (*layers, m, n)), got {w.shape}")
    stack, (m, n) = tuple(w.shape[:-2]), w.shape[-2:]
    _dtype_code(w.dtype, "w")
    s, _, k = _lib.resolve_side(m, n, _side_code(side))
    r = indices.shape[-1] if indices.ndim else 0
    if tuple(indices.shape) != stack + (r,) or tuple(scales.shape) != stack + (r,):
        raise ValueError(f"sparse_adamw_step: indices and scales must be {list(stack)} + [r] "
                         f"for w {list(w.shape)}, got {list(indices.shape)} and "
                         f"{list(scales.shape)}")
    for name, a in (("m_state", m_state), ("v_state", v_state)):
        if tuple(a.shape) != stack + (r, k):
            raise ValueError(f"sparse_adamw_step: {name} must be {list(stack + (r, k))}, got "
                             f"{list(a.shape)}")
    _state_code(m_state.dtype)
    row_steps = _row_steps(row_steps, r, "sparse_adamw_step", stack)
    ws = _lib.sparse_adamw_workspace(m, n, s, r)
    sd = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
    out = jax.ffi.ffi_call(
        "grass_sparse_adamw_step",
        (sd(w), sd(m_state), sd(v_state), jax.ShapeDtypeStruct(stack + (r,), jnp.int32),
         jax.ShapeDtypeStruct(stack, jnp.int32), _ws(ws)),
        input_output_aliases={0: 0, 4: 1, 5: 2, 6: 3},
        vmap_method=_VMAP,
    )(w, jnp.asarray(indices, jnp.int32), jnp.asarray(scales, jnp.float32),
      jnp.asarray(g, jnp.float32).reshape(stack + (r, k)), m_state, v_state, row_steps, _lr(lr),
      jnp.zeros((), jnp.float32) if after is None else after,
      side=np.int32(s), alpha=np.float32(alpha), row_warmup=np.int32(row_warmup),
      lr=np.float32(1.0), **_hyper(beta1, beta2, eps, weight_decay, decay_mode))
    return tuple(out[:5])


def residual_step(w, x, dy, indices, lr, skipped=None, *, side="auto", alpha=1.0,
                  residual_scale=0.1):
    """The residual step, in place: returns (w, skipped).

    Every row (side rows) or column (side cols) u of w (m x n) that is not in `indices`
    (i32[r], sorted) moves by `-lr·alpha·residual_scale·sign(G_u)`, G = dyᵀx from x (b, n) and
    dy (b, m), computed by libgrass in chunks of rows with each chunk's update applied before
    the next: the m x n gradient is never formed. The selected rows are left to
    `sparse_adamw_step`; weight decay is not applied here.

    `skipped` (i32, shape `stack`; zeros when None) is read first: a slice whose outcome is
    not STEP_APPLIED (a compressed step that skipped) does not move; a NaN or infinity in x or
    dy, or a learning rate that is not finite and non-negative, skips the slice and sets its
    outcome to STEP_SKIPPED_NONFINITE. A stacked w (*stack, m, n) takes x (*stack, b, n),
    dy (*stack, b, m) and indices (*stack, r). w and skipped are aliased to the outputs: the
    call is ordered after the compressed step by the w and skipped it returned."""
    _lib.register()
    if w.ndim < 2:
        raise ValueError(f"w must be 2-D (or stacked: (*layers, m, n)), got {w.shape}")
    stack, (m, n) = tuple(w.shape[:-2]), w.shape[-2:]
    _dtype_code(w.dtype, "w")
    if x.ndim != len(stack) + 2 or dy.ndim != len(stack) + 2 or x.shape[:-1] != dy.shape[:-1] \
            or tuple(x.shape[:-2]) != stack or x.shape[-1] != n or dy.shape[-1] != m:
        raise ValueError(f"residual_step: x must be {list(stack)} + [b, {n}] and dy "
                         f"{list(stack)} + [b, {m}] for w {list(w.shape)}, got {list(x.shape)} "
                         f"and {list(dy.shape)}")
    if x.dtype != dy.dtype:
        raise TypeError(f"residual_step: x and dy must have one dtype, got {x.dtype} and "
                        f"{dy.dtype}")
    dt = _dtype_code(x.dtype, "x")
    b = x.shape[-2]
    s, _, _ = _lib.resolve_side(m, n, _side_code(side))
    r = indices.shape[-1] if indices.ndim else 0
    if tuple(indices.shape) != stack + (r,):
        raise ValueError(f"residual_step: indices must be {list(stack)} + [r] for w "
                         f"{list(w.shape)}, got {list(indices.shape)}")
    scale = float(residual_scale)
    if not (math.isfinite(scale) and scale >= 0):
        raise ValueError(f"residual_scale must be finite and non-negative, got {residual_scale}")
    skipped = jnp.zeros(stack, jnp.int32) if skipped is None else \
        jnp.asarray(skipped, jnp.int32).reshape(stack)
    ws = _lib.residual_workspace(m, n, b, s, dt)
    out = jax.ffi.ffi_call(
        "grass_residual_step",
        (jax.ShapeDtypeStruct(w.shape, w.dtype), jax.ShapeDtypeStruct(stack, jnp.int32),
         _ws(ws)),
        input_output_aliases={0: 0, 5: 1},
        vmap_method=_VMAP,
    )(w, x, dy, jnp.asarray(indices, jnp.int32), _lr(lr), skipped,
      side=np.int32(s), alpha=np.float32(alpha), residual_scale=np.float32(scale),
      lr=np.float32(1.0))
    return out[0], out[1]


def state_refresh(old_indices, new_indices, m_state, v_state, row_steps, *,
                  refresh_mode="reset"):
    """Adapts M, V (r x k) and the row step counts (i32[r]) to a new selection, in place:
    returns (m_state, v_state, row_steps).

    "reset" zeroes all of them. "carry" keeps, for each index selected both before and after
    (both index vectors sorted; repeated indices pair up in order), its state row and its step
    count, moved to the index's new position; the rows of entering indices get zero moments and
    a zero count, so their first step is a first Adam step."""
    _lib.register()
    mode = _enum(_lib.REFRESH_MODES, refresh_mode, "refresh_mode")
    r, k = m_state.shape
    row_steps = _row_steps(row_steps, r, "state_refresh")
    ws = _lib.state_refresh_workspace(mode, _state_code(m_state.dtype), r, k)
    sd = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
    out = jax.ffi.ffi_call(
        "grass_state_refresh",
        (sd(m_state), sd(v_state), jax.ShapeDtypeStruct((r,), jnp.int32), _ws(ws)),
        input_output_aliases={2: 0, 3: 1, 4: 2},
        vmap_method=_VMAP,
    )(jnp.asarray(old_indices, jnp.int32), jnp.asarray(new_indices, jnp.int32), m_state,
      v_state, row_steps, refresh_mode=np.int32(mode))
    return tuple(out[:3])


def adamw_step(w, grad, m_state, v_state, step, lr, *, beta1=0.9, beta2=0.999, eps=1e-8,
               weight_decay=0.0, decay_mode="selected", after=None):
    """Plain AdamW on a dense parameter, in place: returns (w, m_state, v_state, step, skipped).
    `step` is one i32 scalar for the whole parameter; `skipped` is the outcome code of
    `sparse_adamw_step` (0 applied, 1 non-finite grad or lr). Weight decay applies to every
    element unless decay_mode is "off". `after`: as for `sparse_adamw_step` (a dense weight
    read by the backward's dX would otherwise be copied before its in-place update)."""
    _lib.register()
    _dtype_code(w.dtype, "w")
    _dtype_code(grad.dtype, "grad")
    _state_code(m_state.dtype)
    if grad.size != w.size or m_state.size != w.size or v_state.size != w.size:
        raise ValueError("w, grad, m_state and v_state must have the same size")
    ws = _lib.adamw_workspace(max(int(w.size), 1))
    sd = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)
    out = jax.ffi.ffi_call(
        "grass_adamw_step",
        (sd(w), sd(m_state), sd(v_state), jax.ShapeDtypeStruct((), jnp.int32),
         jax.ShapeDtypeStruct((), jnp.int32), _ws(ws)),
        input_output_aliases={0: 0, 2: 1, 3: 2, 4: 3},
        vmap_method=_VMAP,
    )(w, grad, m_state, v_state, _step(step), _lr(lr),
      jnp.zeros((), jnp.float32) if after is None else after, lr=np.float32(1.0),
      **_hyper(beta1, beta2, eps, weight_decay, decay_mode))
    return tuple(out[:5])
