"""PyTorch access to libgrass through ctypes: tensors go in by ``data_ptr()``, CUDA work is
enqueued on ``torch.cuda.current_stream()``, so grass composes with eager code, CUDA graphs and
the caching allocator (grass allocates nothing inside an op; workspaces come from torch).

The low-level layer (``Lib``) takes raw addresses and is framework-free; ``GrassLayer`` is the
per-layer GRASS state (σ, ρ, M, V, a step count per state row) on torch tensors.
"""
import ctypes
import os
from ctypes import POINTER, c_char_p, c_float, c_int32, c_int64, c_size_t, c_uint32, c_void_p

# Constants of grass.h (tests/enum_codes.rs checks them against the header).
DTYPE = {"float32": 0, "bfloat16": 1, "float16": 2}
SIDE_ROWS, SIDE_COLS, SIDE_AUTO = 0, 1, 2
METHODS = {"top_r": 0, "multinomial": 1, "multinomial_nr": 2, "uniform": 3, "uniform_nr": 4}
DECAY = {"off": 0, "selected": 1, "dense": 2}
REFRESH = {"reset": 0, "carry": 1}
# What a step writes to ``skipped`` (GRASS_STEP_* in grass.h).
STEP_APPLIED, STEP_SKIPPED_NONFINITE, STEP_SKIPPED_BAD_INDICES, STEP_SKIPPED_BAD_STEP_COUNT = 0, 1, 2, 3


class GrassError(RuntimeError):
    """A failed libgrass call: ``status`` is the grass_status, the message names the argument."""

    def __init__(self, status, message):
        super().__init__(f"grass status {status}: {message}")
        self.status = status


class ProjectionConfig(ctypes.Structure):
    _fields_ = [("struct_size", c_size_t), ("side", c_int32), ("rank", c_int64), ("method", c_int32),
                ("power", c_int32), ("scaling", c_int32), ("refresh_every", c_int64), ("seed", ctypes.c_uint64),
                ("layer_id", c_uint32)]


class AdamWConfig(ctypes.Structure):
    _fields_ = [("struct_size", c_size_t), ("beta1", c_float), ("beta2", c_float), ("eps", c_float),
                ("weight_decay", c_float), ("decay_mode", c_int32), ("alpha", c_float), ("refresh_mode", c_int32),
                ("state_dtype", c_int32), ("row_warmup", c_int32),
                ("dense_state_dtype", c_int32), ("reserved", c_int32)]


P = c_void_p
I64, SZ = c_int64, c_size_t
_SIGNATURES = {
    "grass_context_create_cpu": [POINTER(P)],
    "grass_context_create_cuda": [c_int32, POINTER(P)],
    "grass_cuda_available": [POINTER(c_int32), c_char_p, SZ],
    "grass_projection_config_init": [POINTER(ProjectionConfig)],
    "grass_adamw_config_init_sized": [POINTER(AdamWConfig), SZ],
    "grass_resolve_side": [I64, I64, c_int32, POINTER(c_int32), POINTER(I64), POINTER(I64)],
    "grass_default_rank": [I64, POINTER(I64)],
    "grass_scores_workspace_size": [P, I64, I64, I64, c_int32, c_int32, POINTER(SZ)],
    "grass_row_scores": [P, I64, I64, I64, c_int32, c_int32, P, P, P, P, SZ, P],
    "grass_select_workspace_size": [P, I64, I64, POINTER(SZ)],
    "grass_select": [P, POINTER(ProjectionConfig), I64, c_uint32, P, P, P, P, P, SZ, P],
    "grass_sparse_grad_workspace_size": [P, I64, I64, I64, c_int32, I64, c_int32, POINTER(SZ)],
    "grass_sparse_grad": [P, I64, I64, I64, c_int32, I64, c_int32, P, P, P, P, P, c_int32, P, SZ, P],
    "grass_sparse_adamw_workspace_size": [P, I64, I64, c_int32, I64, POINTER(SZ)],
    "grass_sparse_adamw_step": [P, POINTER(AdamWConfig), I64, I64, c_int32, I64, c_int32, P, P, P, P, P, P, P,
                                c_float, P, P, P, SZ, P],
    "grass_adamw_workspace_size": [P, I64, POINTER(SZ)],
    "grass_adamw_step": [P, POINTER(AdamWConfig), I64, c_int32, P, c_int32, P, P, P, P, c_float, P, P, P, SZ, P],
    "grass_state_refresh_workspace_size": [P, c_int32, c_int32, I64, I64, POINTER(SZ)],
    "grass_state_refresh": [P, c_int32, c_int32, I64, I64, P, P, P, P, P, P, SZ, P],
}


def _find_library():
    env = os.environ.get("GRASS_LIB")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    for cand in (os.path.join(here, "libgrass.so"),
                 os.path.join(here, "..", "..", "target", "release", "libgrass.so")):
        if os.path.exists(cand):
            return cand
    return "libgrass.so"


class Lib:
    """The C ABI with status checking; every buffer argument is an integer address."""

    def __init__(self, path=None):
        self.dll = ctypes.CDLL(path or _find_library())
        for name, args in _SIGNATURES.items():
            fn = getattr(self.dll, name)
            fn.argtypes = args
            fn.restype = c_int32
        self.dll.grass_last_error_message.argtypes = []
        self.dll.grass_last_error_message.restype = c_char_p
        self.dll.grass_context_destroy.argtypes = [P]
        self.dll.grass_context_destroy.restype = None
        self._contexts = {}

    def call(self, name, *args):
        status = getattr(self.dll, name)(*args)
        if status != 0:
            raise GrassError(status, self.dll.grass_last_error_message().decode())

    def context(self, cuda_ordinal=None):
        """A cached context: CPU when ``cuda_ordinal`` is None, else that CUDA device."""
        key = cuda_ordinal
        if key not in self._contexts:
            ctx = P()
            if cuda_ordinal is None:
                self.call("grass_context_create_cpu", ctypes.byref(ctx))
            else:
                self.call("grass_context_create_cuda", int(cuda_ordinal), ctypes.byref(ctx))
            self._contexts[key] = ctx
        return self._contexts[key]

    def cuda_available(self):
        """(True or False, the reason grass_cuda_available gives)."""
        ok, reason = c_int32(), ctypes.create_string_buffer(512)
        self.call("grass_cuda_available", ctypes.byref(ok), reason, len(reason))
        return bool(ok.value), reason.value.decode()

    def size_query(self, name, *args):
        out = SZ()
        self.call(name, *args, ctypes.byref(out))
        return out.value

    def projection_config(self, **kw):
        c = ProjectionConfig()
        self.call("grass_projection_config_init", ctypes.byref(c))
        for k, v in kw.items():
            if k == "method":
                v = METHODS[v] if isinstance(v, str) else v
            setattr(c, k, v)
        return c

    def adamw_config(self, **kw):
        c = AdamWConfig()
        self.call("grass_adamw_config_init_sized", ctypes.byref(c), ctypes.sizeof(c))
        for k, v in kw.items():
            if k == "decay_mode":
                v = DECAY[v] if isinstance(v, str) else v
            elif k == "refresh_mode":
                v = REFRESH[v] if isinstance(v, str) else v
            elif k in ("state_dtype", "dense_state_dtype"):
                v = DTYPE[v] if isinstance(v, str) else v
            setattr(c, k, v)
        return c

    def default_rank(self, d):
        """The library's rank rule: the rank a projected dimension ``d`` gets by default."""
        r = I64()
        self.call("grass_default_rank", int(d), ctypes.byref(r))
        return r.value

    def defaults(self):
        """The library's defaults: the fields of grass_projection_config_init's and
        grass_adamw_config_init's configs by name (rank 0: the rank rule)."""
        p, a = self.projection_config(), self.adamw_config()
        return {**{k: getattr(p, k) for k, _ in ProjectionConfig._fields_ if k != "struct_size"},
                **{k: getattr(a, k) for k, _ in AdamWConfig._fields_ if k != "struct_size"}}

    def resolve_side(self, m, n, side):
        s, d, k = c_int32(), I64(), I64()
        self.call("grass_resolve_side", m, n, side, ctypes.byref(s), ctypes.byref(d), ctypes.byref(k))
        return s.value, d.value, k.value


# ---------------------------------------------------------------- torch adapter
def _torch():
    import torch
    return torch


def _dtype_code(t):
    return DTYPE[_describe(t)[0]]


ACT_DTYPES = ("float32", "bfloat16", "float16")
STATE_DTYPES = ("float32", "bfloat16")


def _describe(t):
    """(dtype name, shape, C-contiguous, device) of a torch tensor (or a numpy array, which
    lives on the CPU)."""
    if hasattr(t, "is_contiguous"):
        return str(t.dtype).replace("torch.", ""), tuple(t.shape), t.is_contiguous(), str(t.device)
    return t.dtype.name, tuple(t.shape), bool(t.flags.c_contiguous), "cpu"


def _check(name, t, dtypes, shape, device):
    """Checks a tensor before its address goes to libgrass, which reads and writes exactly
    prod(shape) elements of its dtype, row-major, in the memory of ``device``: a transposed view,
    a wrong dtype, size or device would be misread silently. ``shape`` entries of None are free
    (their size is read from the tensor); returns the tensor's shape."""
    dtype, got, contiguous, dev = _describe(t)
    if dtype not in dtypes:
        raise TypeError(f"{name} must be {' or '.join(dtypes)}, got {dtype}")
    if len(got) != len(shape) or any(w is not None and g != w for g, w in zip(got, shape)):
        want = "(" + ", ".join("*" if w is None else str(w) for w in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {got}")
    if not contiguous:
        raise ValueError(f"{name} must be contiguous (row-major), got a strided view of shape {got}: "
                         f"pass {name}.contiguous()")
    if device is not None and dev != device:
        raise ValueError(f"{name} is on {dev}, the other tensors of the call on {device}")
    return got


def _numel(shape):
    out = 1
    for d in shape:
        out *= d
    return out


def _counts(name, t, n, device=None):
    """Checks that ``t`` is an int32 tensor of ``n`` step counts (libgrass reads and writes n)."""
    _check(name, t, ("int32",), (n,), device)


class Torch:
    """Layer-1 ops on torch tensors (CPU tensors use a CPU context, CUDA tensors a CUDA context
    on their device and the current stream)."""

    def __init__(self, lib=None):
        self.lib = lib or Lib()
        self._ws = {}

    def _ctx_stream(self, t):
        torch = _torch()
        if t.is_cuda:
            return self.lib.context(t.device.index), torch.cuda.current_stream(t.device).cuda_stream
        return self.lib.context(None), None

    def workspace(self, nbytes, like):
        """A cached byte buffer of at least ``nbytes`` on ``like``'s device."""
        torch = _torch()
        key = (like.device.type, like.device.index)
        buf = self._ws.get(key)
        if buf is None or buf.numel() < nbytes:
            buf = torch.empty(max(nbytes, 1), dtype=torch.uint8, device=like.device)
            self._ws[key] = buf
        return buf

    def _activations(self, x, dy):
        """(b, m, n, device) of X (b x n) and dY (b x m), checked."""
        dev = _describe(x)[3]
        b, n = _check("x", x, ACT_DTYPES, (None, None), dev)
        _, m = _check("dy", dy, (_describe(x)[0],), (b, None), dev)
        return b, m, n, dev

    def row_scores(self, x, dy, side=SIDE_AUTO):
        torch = _torch()
        b, m, n, _ = self._activations(x, dy)
        ctx, stream = self._ctx_stream(x)
        _, d, _ = self.lib.resolve_side(m, n, side)
        dt = _dtype_code(x)
        wsb = self.lib.size_query("grass_scores_workspace_size", ctx, m, n, b, side, dt)
        ws = self.workspace(wsb, x)
        out = torch.empty(d, dtype=torch.float32, device=x.device)
        self.lib.call("grass_row_scores", ctx, m, n, b, side, dt, x.data_ptr(), dy.data_ptr(), out.data_ptr(),
                      ws.data_ptr(), ws.numel(), stream)
        return out

    def select(self, scores, config, refresh_index):
        torch = _torch()
        (d,) = _check("scores", scores, ("float32",), (None,), None)
        r = config.rank
        ctx, stream = self._ctx_stream(scores)
        wsb = self.lib.size_query("grass_select_workspace_size", ctx, d, r)
        ws = self.workspace(wsb, scores)
        idx = torch.empty(r, dtype=torch.int32, device=scores.device)
        rho = torch.empty(r, dtype=torch.float32, device=scores.device)
        self.lib.call("grass_select", ctx, ctypes.byref(config), d, refresh_index, None, scores.data_ptr(), idx.data_ptr(),
                      rho.data_ptr(), ws.data_ptr(), ws.numel(), stream)
        return idx, rho

    def sparse_grad(self, x, dy, idx, rho, side=SIDE_AUTO, out=None, accumulate=False):
        torch = _torch()
        b, m, n, dev = self._activations(x, dy)
        (r,) = _check("idx", idx, ("int32",), (None,), dev)
        _check("rho", rho, ("float32",), (r,), dev)
        _, _, k = self.lib.resolve_side(m, n, side)
        if out is not None:
            _check("out", out, ("float32",), (r, k), dev)
        ctx, stream = self._ctx_stream(x)
        dt = _dtype_code(x)
        wsb = self.lib.size_query("grass_sparse_grad_workspace_size", ctx, m, n, b, side, r, dt)
        ws = self.workspace(wsb, x)
        if out is None:
            out = torch.empty(r, k, dtype=torch.float32, device=x.device)
        self.lib.call("grass_sparse_grad", ctx, m, n, b, side, r, dt, x.data_ptr(), dy.data_ptr(), idx.data_ptr(),
                      rho.data_ptr(), out.data_ptr(), int(accumulate), ws.data_ptr(), ws.numel(), stream)
        return out

    def sparse_adamw_step(self, config, w, idx, rho, g, m_state, v_state, row_steps, lr, side=SIDE_AUTO,
                          lr_scale=None, skipped=None):
        """``row_steps``: int32[r], the Adam step of each state row (each advances by one when
        the step is applied); ``skipped`` (int32[1]) receives a ``STEP_*`` outcome."""
        dev = _describe(w)[3]
        m, n = _check("w", w, ACT_DTYPES, (None, None), dev)
        _, _, k = self.lib.resolve_side(m, n, side)
        (r,) = _check("idx", idx, ("int32",), (None,), dev)
        _check("rho", rho, ("float32",), (r,), dev)
        _check("g", g, ("float32",), (r, k), dev)
        self._states(config, m_state, v_state, (r, k), dev)
        _counts("row_steps", row_steps, r, dev)
        self._step_scalars(lr_scale, skipped, dev)
        ctx, stream = self._ctx_stream(w)
        wsb = self.lib.size_query("grass_sparse_adamw_workspace_size", ctx, m, n, side, r)
        ws = self.workspace(wsb, w)
        self.lib.call("grass_sparse_adamw_step", ctx, ctypes.byref(config), m, n, side, r, _dtype_code(w),
                      w.data_ptr(), idx.data_ptr(), rho.data_ptr(), g.data_ptr(), m_state.data_ptr(),
                      v_state.data_ptr(), row_steps.data_ptr(), float(lr),
                      None if lr_scale is None else lr_scale.data_ptr(),
                      None if skipped is None else skipped.data_ptr(), ws.data_ptr(), ws.numel(), stream)

    @staticmethod
    def _states(config, m_state, v_state, shape, dev):
        """M and V: ``shape``, of the config's state dtype."""
        sdt = tuple(k for k, v in DTYPE.items() if v == config.state_dtype) or STATE_DTYPES
        _check("m_state", m_state, sdt, shape, dev)
        _check("v_state", v_state, sdt, shape, dev)

    @staticmethod
    def _step_scalars(lr_scale, skipped, dev):
        if lr_scale is not None:
            _check("lr_scale", lr_scale, ("float32",), (1,), dev)
        if skipped is not None:
            _check("skipped", skipped, ("int32",), (1,), dev)

    def state_refresh(self, refresh_mode, old_idx, new_idx, m_state, v_state, row_steps):
        """Adapts M, V and ``row_steps`` (int32[r]) to the selection ``new_idx``: ``refresh_mode``
        "reset" (or REFRESH["reset"]) zeroes them, "carry" keeps the rows (and counts) of
        indices that stay and zeroes the others. The state dtype is M's."""
        dev = _describe(m_state)[3]
        r, k = _check("m_state", m_state, STATE_DTYPES, (None, None), dev)
        _check("v_state", v_state, (_describe(m_state)[0],), (r, k), dev)
        _check("new_idx", new_idx, ("int32",), (r,), dev)
        if old_idx is not None:
            _check("old_idx", old_idx, ("int32",), (r,), dev)
        _counts("row_steps", row_steps, r, dev)
        mode = REFRESH[refresh_mode] if isinstance(refresh_mode, str) else int(refresh_mode)
        sdt = _dtype_code(m_state)
        ctx, stream = self._ctx_stream(m_state)
        wsb = self.lib.size_query("grass_state_refresh_workspace_size", ctx, mode, sdt, r, k)
        ws = self.workspace(wsb, m_state)
        self.lib.call("grass_state_refresh", ctx, mode, sdt, r, k,
                      None if old_idx is None else old_idx.data_ptr(), new_idx.data_ptr(), m_state.data_ptr(),
                      v_state.data_ptr(), row_steps.data_ptr(), ws.data_ptr(), ws.numel(), stream)

    def adamw_step(self, config, w, grad, m_state, v_state, step, lr, lr_scale=None, skipped=None):
        """Dense AdamW; ``step`` is int32[1], the parameter's Adam step; ``m_state`` and
        ``v_state`` of ``config.dense_state_dtype``."""
        dev = _describe(w)[3]
        numel = _numel(_check("w", w, ACT_DTYPES, (None,) * len(_describe(w)[1]), dev))
        sdt = tuple(k for k, v in DTYPE.items() if v == config.dense_state_dtype) or STATE_DTYPES
        for name, t, dtypes in (("grad", grad, ACT_DTYPES), ("m_state", m_state, sdt), ("v_state", v_state, sdt)):
            got = _check(name, t, dtypes, (None,) * len(_describe(t)[1]), dev)
            if _numel(got) != numel:
                raise ValueError(f"{name} must have {numel} elements like w, got shape {got}")
        _counts("step", step, 1, dev)
        self._step_scalars(lr_scale, skipped, dev)
        ctx, stream = self._ctx_stream(w)
        numel = w.numel()
        wsb = self.lib.size_query("grass_adamw_workspace_size", ctx, numel)
        ws = self.workspace(wsb, w)
        self.lib.call("grass_adamw_step", ctx, ctypes.byref(config), numel, _dtype_code(w), w.data_ptr(),
                      _dtype_code(grad), grad.data_ptr(), m_state.data_ptr(), v_state.data_ptr(), step.data_ptr(),
                      float(lr), None if lr_scale is None else lr_scale.data_ptr(),
                      None if skipped is None else skipped.data_ptr(), ws.data_ptr(), ws.numel(), stream)


class GrassLayer:
    """GRASS state of one ``m x n`` weight on torch tensors: call ``refresh(x, dy)`` when
    ``refresh_due``, then ``step(w, x, dy, lr)`` every training step."""

    def __init__(self, ops, w, rank=None, method=None, side=None, refresh_every=None, seed=None,
                 layer_id=0, **adamw):
        """Options left None take the library's defaults (grass_projection_config_init); rank None
        is the library's rank rule for this weight's projected dimension (grass_default_rank).
        ``adamw`` overrides fields of grass_adamw_config_init's config."""
        torch = _torch()
        base = ops.lib.projection_config()
        side = base.side if side is None else side
        m, n = w.shape
        self.side, self.d, self.k = ops.lib.resolve_side(m, n, side)
        rank = ops.lib.default_rank(self.d) if rank is None else rank
        given = {"method": method, "refresh_every": refresh_every, "seed": seed}
        self.pcfg = ops.lib.projection_config(rank=rank, side=self.side, layer_id=layer_id,
                                              **{k: v for k, v in given.items() if v is not None})
        refresh_every = self.pcfg.refresh_every
        self.acfg = ops.lib.adamw_config(**adamw)
        sdt = torch.bfloat16 if self.acfg.state_dtype == DTYPE["bfloat16"] else torch.float32
        dev = w.device
        self.m_state = torch.zeros(rank, self.k, dtype=sdt, device=dev)
        self.v_state = torch.zeros(rank, self.k, dtype=sdt, device=dev)
        self.g = torch.zeros(rank, self.k, dtype=torch.float32, device=dev)
        self.row_steps = torch.zeros(rank, dtype=torch.int32, device=dev)
        self.skipped = torch.zeros(1, dtype=torch.int32, device=dev)
        self.idx = None
        self.rho = None
        self.refreshes = 0
        self.since_refresh = 0
        self.refresh_every = refresh_every

    @property
    def refresh_due(self):
        return self.idx is None or self.since_refresh >= self.refresh_every

    def refresh(self, x, dy, scores=None):
        if scores is None:
            scores = self.ops.row_scores(x, dy, self.side)
        idx, rho = self.ops.select(scores, self.pcfg, self.refreshes)
        self.ops.state_refresh(self.acfg.refresh_mode, self.idx, idx, self.m_state, self.v_state,
                               self.row_steps)
        self.idx, self.rho = idx, rho
        self.refreshes += 1
        self.since_refresh = 0

    def step(self, w, x, dy, lr):
        if self.refresh_due:
            self.refresh(x, dy)
        self.ops.sparse_grad(x, dy, self.idx, self.rho, self.side, out=self.g)
        self.ops.sparse_adamw_step(self.acfg, w, self.idx, self.rho, self.g, self.m_state, self.v_state,
                                   self.row_steps, lr, self.side, skipped=self.skipped)
        self.since_refresh += 1
