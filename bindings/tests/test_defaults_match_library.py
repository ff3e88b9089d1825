"""Every binding's defaults are the library's: the C init functions (grass_projection_config_init,
grass_adamw_config_init) hold the one set of defaults, kept in the Rust core
(src/core/config.rs); grass_jax's grass_adamw signature and grass_torch's GrassLayer read them
from the library instead of restating them. This test fails when a binding's default differs
from what the C functions return, or when a binding states a value of its own."""
import ctypes
import inspect
import os
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LIBGRASS = os.environ.get("GRASS_LIB", os.path.join(ROOT, "target", "release", "libgrass.so"))

sys.path.insert(0, os.path.join(ROOT, "bindings", "torch"))
import grass_torch  # noqa: E402

sys.path.pop(0)


def c_defaults():
    """The C init functions' configs, read through plain ctypes (no binding code)."""
    lib = ctypes.CDLL(LIBGRASS)
    p, a = grass_torch.ProjectionConfig(), grass_torch.AdamWConfig()
    assert lib.grass_projection_config_init(ctypes.byref(p)) == 0
    assert lib.grass_adamw_config_init_sized(ctypes.byref(a), ctypes.sizeof(a)) == 0
    out = {k: getattr(p, k) for k, _ in p._fields_ if k != "struct_size"}
    out.update({k: getattr(a, k) for k, _ in a._fields_ if k != "struct_size"})
    return out


def jax_signature_defaults():
    sys.path.insert(0, os.path.join(ROOT, "bindings", "jax"))
    try:
        from grass_jax import _lib
        from grass_jax.optimizer import grass_adamw
    finally:
        sys.path.pop(0)
    import jax.numpy as jnp
    sig = {k: v.default for k, v in inspect.signature(grass_adamw.__init__).parameters.items()}
    code = {"method": _lib.METHODS, "scaling": _lib.SCALINGS, "side": _lib.SIDES,
            "decay_mode": _lib.DECAY_MODES, "refresh_mode": _lib.REFRESH_MODES}
    out = {c: code[c][sig[c]] for c in code}
    out.update(refresh_every=sig["refresh_every"], power=sig["power"], seed=sig["seed"],
               beta1=sig["b1"], beta2=sig["b2"], eps=sig["eps"],
               weight_decay=sig["weight_decay"], alpha=sig["alpha"],
               state_dtype={jnp.dtype(jnp.float32): _lib.DTYPE_F32,
                            jnp.dtype(jnp.bfloat16): _lib.DTYPE_BF16}[jnp.dtype(sig["state_dtype"])],
               dense_state_dtype={jnp.dtype(jnp.float32): _lib.DTYPE_F32,
                                  jnp.dtype(jnp.bfloat16): _lib.DTYPE_BF16}[
                   jnp.dtype(sig["dense_state_dtype"])],
               rank=sig["rank"], row_warmup=sig["row_warmup"])
    return out


def f32(x):
    return ctypes.c_float(x).value


def test_c_defaults_are_the_measured_ones():
    c = c_defaults()
    assert (c["method"], c["scaling"], c["side"], c["rank"]) == (
        grass_torch.METHODS["uniform_nr"], 1, grass_torch.SIDE_COLS, 0)
    assert c["alpha"] == f32(0.177)
    assert c["row_warmup"] == 10
    assert (c["state_dtype"], c["dense_state_dtype"], c["reserved"]) == (
        grass_torch.DTYPE["bfloat16"], grass_torch.DTYPE["float32"], 0)


@pytest.mark.parametrize("name", ["method", "scaling", "side", "refresh_every", "power", "seed",
                                  "beta1", "beta2", "eps", "weight_decay", "decay_mode", "alpha",
                                  "refresh_mode", "state_dtype", "dense_state_dtype",
                                  "row_warmup"])
def test_jax_defaults_are_the_c_ones(name):
    c, j = c_defaults(), jax_signature_defaults()
    want, got = c[name], j[name]
    if isinstance(want, float):
        got = f32(got)  # the library holds f32
    assert got == want, f"grass_jax grass_adamw({name}=...) defaults to {j[name]!r}, C to {want!r}"


def test_jax_rank_default_is_the_rank_rule():
    assert jax_signature_defaults()["rank"] is None and c_defaults()["rank"] == 0


def test_jax_reads_the_rank_rule_from_the_library():
    sys.path.insert(0, os.path.join(ROOT, "bindings", "jax"))
    try:
        from grass_jax import _lib
    finally:
        sys.path.pop(0)
    lib = grass_torch.Lib(LIBGRASS)
    for d in (1, 6, 8, 100, 128, 768, 4096, 13824):
        assert _lib.default_rank(d) == lib.default_rank(d)
    assert _lib.defaults()["rank"] is None  # C rank 0: the rule


def test_torch_states_no_defaults_of_its_own():
    """GrassLayer leaves every selection option None (the library's) and rank None (the rule);
    Lib.defaults() is the C configs field for field."""
    sig = inspect.signature(grass_torch.GrassLayer.__init__).parameters
    for name in ("rank", "method", "side", "refresh_every", "seed"):
        assert sig[name].default is None, f"GrassLayer({name}=...) restates a default"
    lib = grass_torch.Lib(LIBGRASS)
    assert lib.defaults() == c_defaults()
    assert lib.default_rank(128) == 64


def test_residual_scale_is_the_library_one():
    """grass_default_residual_scale() (the core's defaults::RESIDUAL_SCALE) is what grass_jax's
    grass_adamw and the trainer's --residual-scale default to; the residual itself is opt-in."""
    lib = ctypes.CDLL(LIBGRASS)
    lib.grass_default_residual_scale.restype = ctypes.c_float
    want = lib.grass_default_residual_scale()
    assert want == f32(0.1)
    sys.path.insert(0, os.path.join(ROOT, "bindings", "jax"))
    try:
        from grass_jax import train
        from grass_jax.optimizer import grass_adamw
    finally:
        sys.path.pop(0)
    sig = inspect.signature(grass_adamw.__init__).parameters
    assert f32(sig["residual_scale"].default) == want and sig["residual"].default == "none"
    cfg = train.make_config({})
    assert f32(cfg.residual_scale) == want and cfg.residual == "none"


def test_the_trainer_takes_the_library_row_warmup():
    """The trainer's grass runs grass as shipped: its --row-warmup default is the library's."""
    sys.path.insert(0, os.path.join(ROOT, "bindings", "jax"))
    try:
        from grass_jax import train
    finally:
        sys.path.pop(0)
    assert train.make_config({}).row_warmup == c_defaults()["row_warmup"]
