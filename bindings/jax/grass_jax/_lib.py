"""Loads libgrass and the FFI handlers shipped in this package, registers the handlers with
XLA, and asks libgrass (through ctypes, at trace time) for workspace sizes and shape rules."""

import ctypes
import functools
import os
import threading
from pathlib import Path

import jax

from .errors import GrassError

_HERE = Path(__file__).resolve().parent

# Constants of grass.h (tests/enum_codes.rs checks them against the header).
DTYPE_F32, DTYPE_BF16, DTYPE_F16 = 0, 1, 2
SIDE_ROWS, SIDE_COLS, SIDE_AUTO = 0, 1, 2
METHODS = {"top_r": 0, "multinomial": 1, "multinomial_nr": 2, "uniform": 3, "uniform_nr": 4}
SCALINGS = {"unbiased": 0, "none": 1}
DECAY_MODES = {"off": 0, "selected": 1, "dense": 2}
REFRESH_MODES = {"reset": 0, "carry": 1}
# What a step writes to `skipped` (GRASS_STEP_*).
STEP_APPLIED, STEP_SKIPPED_NONFINITE, STEP_SKIPPED_BAD_INDICES, STEP_SKIPPED_BAD_STEP_COUNT = 0, 1, 2, 3
SIDES = {"rows": SIDE_ROWS, "cols": SIDE_COLS, "auto": SIDE_AUTO}
ABI_VERSION = 7

# Target name -> handler symbol prefix in libgrass_jax_ffi.so (suffixed Cpu / Cuda).
TARGETS = {
    "grass_row_scores": "GrassRowScores",
    "grass_select": "GrassSelect",
    "grass_sparse_grad": "GrassSparseGrad",
    "grass_sparse_adamw_step": "GrassSparseAdamWStep",
    "grass_state_refresh": "GrassStateRefresh",
    "grass_adamw_step": "GrassAdamWStep",
    "grass_residual_step": "GrassResidualStep",
}

_c = ctypes
_i64, _i32, _u32, _sz = _c.c_int64, _c.c_int32, _c.c_uint32, _c.c_size_t
_p = _c.c_void_p
_PROTOTYPES = {
    "grass_version": (_c.c_char_p, []),
    "grass_abi_version": (_u32, []),
    "grass_status_string": (_c.c_char_p, [_i32]),
    "grass_last_error_message": (_c.c_char_p, []),
    "grass_context_create_cpu": (_i32, [_c.POINTER(_p)]),
    "grass_context_create_cuda": (_i32, [_i32, _c.POINTER(_p)]),
    "grass_cuda_available": (_i32, [_c.POINTER(_i32), _c.c_char_p, _sz]),
    "grass_resolve_side": (_i32, [_i64, _i64, _i32, _c.POINTER(_i32), _c.POINTER(_i64),
                                  _c.POINTER(_i64)]),
    "grass_scores_workspace_size": (_i32, [_p, _i64, _i64, _i64, _i32, _i32, _c.POINTER(_sz)]),
    "grass_select_workspace_size": (_i32, [_p, _i64, _i64, _c.POINTER(_sz)]),
    "grass_sparse_grad_workspace_size": (_i32, [_p, _i64, _i64, _i64, _i32, _i64, _i32,
                                                _c.POINTER(_sz)]),
    "grass_sparse_adamw_workspace_size": (_i32, [_p, _i64, _i64, _i32, _i64, _c.POINTER(_sz)]),
    "grass_adamw_workspace_size": (_i32, [_p, _i64, _c.POINTER(_sz)]),
    "grass_residual_workspace_size": (_i32, [_p, _i64, _i64, _i64, _i32, _i32,
                                             _c.POINTER(_sz)]),
    "grass_default_residual_scale": (_c.c_float, []),
    "grass_state_refresh_workspace_size": (_i32, [_p, _i32, _i32, _i64, _i64,
                                                  _c.POINTER(_sz)]),
    "grass_adamw_config_init_sized": (_i32, [_p, _sz]),
    "grass_projection_config_init": (_i32, [_p]),
    "grass_default_rank": (_i32, [_i64, _c.POINTER(_i64)]),
    "grass_memory_plan": (_i32, [_p, _p, _p, _sz, _i64, _p]),
}


class _ProjectionConfig(ctypes.Structure):
    """grass_projection_config of grass.h (`defaults()` reads the library's defaults)."""

    _fields_ = [
        ("struct_size", _sz), ("side", _i32), ("rank", _i64), ("method", _i32), ("power", _i32),
        ("scaling", _i32), ("refresh_every", _i64), ("seed", _c.c_uint64), ("layer_id", _u32),
    ]


class _AdamWConfig(ctypes.Structure):
    """grass_adamw_config of grass.h (the memory plan reads its state dtype; `defaults()` the
    library's defaults)."""

    _fields_ = [
        ("struct_size", _sz), ("beta1", _c.c_float), ("beta2", _c.c_float),
        ("eps", _c.c_float), ("weight_decay", _c.c_float), ("decay_mode", _i32),
        ("alpha", _c.c_float), ("refresh_mode", _i32), ("state_dtype", _i32),
        ("row_warmup", _i32), ("dense_state_dtype", _i32), ("reserved", _i32),
    ]


@functools.cache
def libgrass():
    """libgrass.so: $GRASS_JAX_LIBGRASS, else this package's (where `pip install` put it), else,
    in a source checkout, the repository's release build (target/release)."""
    path = os.environ.get("GRASS_JAX_LIBGRASS", str(_HERE / "libgrass.so"))
    built = _HERE.parents[2] / "target" / "release" / "libgrass.so"
    if "GRASS_JAX_LIBGRASS" not in os.environ and not os.path.exists(path) and built.exists():
        path = str(built)
    # RTLD_GLOBAL: the handler library then binds to this very copy of libgrass.
    lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    for name, (res, args) in _PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    # A library implements its ABI and the earlier generations it only adds to (ABI 4, 5 and 6
    # each add to the one before): an older one lacks functions and fields this package uses.
    if lib.grass_abi_version() < ABI_VERSION:
        raise ImportError(
            f"{path} implements grass ABI {lib.grass_abi_version()}, this package needs "
            f"{ABI_VERSION}: rebuild the binding against the library you load"
        )
    return lib


def _name(table, code):
    return next(k for k, v in table.items() if v == code)


@functools.cache
def defaults():
    """The library's defaults (what grass_projection_config_init and grass_adamw_config_init
    return), as grass_adamw's keyword names and values: the one set of defaults, kept in the
    Rust core. rank None is the rank rule (`default_rank`)."""
    lib = libgrass()
    p, a = _ProjectionConfig(), _AdamWConfig()
    check(lib.grass_projection_config_init(ctypes.byref(p)), "grass_projection_config_init")
    check(lib.grass_adamw_config_init_sized(ctypes.byref(a), ctypes.sizeof(a)),
          "grass_adamw_config_init_sized")
    import numpy as np

    def f32(x):  # the shortest decimal of the library's f32 (1e-08, not 9.99999993922529e-09)
        return float(np.format_float_positional(np.float32(x), unique=True, trim="-"))
    return {
        "rank": None if p.rank == 0 else int(p.rank),
        "refresh_every": int(p.refresh_every),
        "method": _name(METHODS, p.method),
        "power": int(p.power),
        "scaling": _name(SCALINGS, p.scaling),
        "side": _name(SIDES, p.side),
        "seed": int(p.seed),
        "b1": f32(a.beta1),
        "b2": f32(a.beta2),
        "eps": f32(a.eps),
        "weight_decay": f32(a.weight_decay),
        "decay_mode": _name(DECAY_MODES, a.decay_mode),
        "alpha": f32(a.alpha),
        "refresh_mode": _name(REFRESH_MODES, a.refresh_mode),
        "state_dtype": {DTYPE_F32: "float32", DTYPE_BF16: "bfloat16"}[a.state_dtype],
        "dense_state_dtype": {DTYPE_F32: "float32", DTYPE_BF16: "bfloat16"}[a.dense_state_dtype],
        "row_warmup": int(a.row_warmup),
        "residual_scale": f32(lib.grass_default_residual_scale()),
    }


def default_rank(d):
    """The rank rule of the library (grass_default_rank): the rank a projected dimension d
    gets when no rank is given."""
    out = ctypes.c_int64(0)
    check(libgrass().grass_default_rank(int(d), ctypes.byref(out)), "grass_default_rank")
    return int(out.value)


@functools.cache
def handlers():
    return ctypes.CDLL(str(_HERE / "libgrass_jax_ffi.so"))


_registered = False
_register_lock = threading.Lock()


def register():
    """Registers every handler for platforms "cpu" and "CUDA" (idempotent)."""
    global _registered
    with _register_lock:
        if _registered:
            return
        libgrass()
        h = handlers()
        for target, symbol in TARGETS.items():
            for platform, suffix in (("cpu", "Cpu"), ("CUDA", "Cuda")):
                capsule = jax.ffi.pycapsule(getattr(h, symbol + suffix))
                jax.ffi.register_ffi_target(target, capsule, platform=platform)
        _registered = True


def check(status, fn):
    if status != 0:
        raise GrassError.from_status(libgrass(), status, fn)


def version():
    return libgrass().grass_version().decode()


def cuda_available():
    """(available, reason) as libgrass sees it."""
    ok, buf = ctypes.c_int32(0), ctypes.create_string_buffer(512)
    check(libgrass().grass_cuda_available(ctypes.byref(ok), buf, len(buf)), "grass_cuda_available")
    return bool(ok.value), buf.value.decode(errors="replace")


_contexts = {}
_ctx_lock = threading.Lock()


def _context(kind, ordinal=0):
    with _ctx_lock:
        key = (kind, ordinal)
        if key not in _contexts:
            ctx = ctypes.c_void_p()
            lib = libgrass()
            if kind == "cpu":
                check(lib.grass_context_create_cpu(ctypes.byref(ctx)), "grass_context_create_cpu")
            else:
                check(lib.grass_context_create_cuda(ordinal, ctypes.byref(ctx)),
                      "grass_context_create_cuda")
            _contexts[key] = ctx  # kept for the life of the process, like the handlers' own
        return _contexts[key]


def _gpu_ordinals():
    try:
        return sorted({d.local_hardware_id for d in jax.local_devices(backend="gpu")})
    except RuntimeError:
        return []


_cuda_unusable = {}


def query_contexts():
    """Contexts whose workspace sizes bound a call: the CPU one, plus one CUDA context per
    local GPU when JAX has a GPU backend (a traced call may be lowered for either). A GPU on
    which libgrass cannot make a context is left out here: the call would fail there anyway,
    with libgrass's reason, when the CUDA handler runs."""
    out = [_context("cpu")]
    for o in _gpu_ordinals():
        if o in _cuda_unusable:
            continue
        try:
            out.append(_context("cuda", o))
        except GrassError as e:
            _cuda_unusable[o] = e
    return out


def _workspace(fn_name, *args):
    fn = getattr(libgrass(), fn_name)
    need = 0
    for ctx in query_contexts():
        out = ctypes.c_size_t(0)
        check(fn(ctx, *args, ctypes.byref(out)), fn_name)
        need = max(need, out.value)
    return need


def scores_workspace(m, n, b, side, dtype):
    return _workspace("grass_scores_workspace_size", m, n, b, side, dtype)


def select_workspace(d, r):
    return _workspace("grass_select_workspace_size", d, r)


def sparse_grad_workspace(m, n, b, side, r, dtype):
    return _workspace("grass_sparse_grad_workspace_size", m, n, b, side, r, dtype)


def sparse_adamw_workspace(m, n, side, r):
    return _workspace("grass_sparse_adamw_workspace_size", m, n, side, r)


def residual_workspace(m, n, b, side, dtype):
    return _workspace("grass_residual_workspace_size", m, n, b, side, dtype)


def adamw_workspace(numel):
    return _workspace("grass_adamw_workspace_size", numel)


def state_refresh_workspace(refresh_mode, state_dtype, r, k):
    return _workspace("grass_state_refresh_workspace_size", refresh_mode, state_dtype, r, k)


@functools.cache
def resolve_side(m, n, side):
    """(side, d, k) for an m x n weight: the resolved side, projected and kept dimension."""
    s, d, k = ctypes.c_int32(), ctypes.c_int64(), ctypes.c_int64()
    check(libgrass().grass_resolve_side(m, n, side, ctypes.byref(s), ctypes.byref(d),
                                        ctypes.byref(k)), "grass_resolve_side")
    return s.value, d.value, k.value
