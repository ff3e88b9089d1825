"""Shared fixtures. Every test that takes `platform` runs once on CPU and once on a GPU; the
GPU run skips, saying why, where JAX has no GPU or libgrass has no usable CUDA context."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import grass_jax

# Relative tolerance per dtype of the *result*: libgrass computes in f32, so f32 results differ
# from the f32 reference by accumulation order only; bf16 / f16 results by one rounding.
TOL = {jnp.dtype(jnp.float32): 2e-5, jnp.dtype(jnp.bfloat16): 1e-2,
       jnp.dtype(jnp.float16): 2e-3}


def gpu_skip_reason():
    try:
        gpus = jax.devices("gpu")
    except RuntimeError as e:
        return f"no GPU: JAX has no GPU backend here ({str(e).splitlines()[0]})"
    if not gpus:
        return "no GPU: JAX lists no GPU device"
    ok, why = grass_jax.cuda_available()
    if not ok:
        return f"GPU present but libgrass cannot use CUDA: {why}"
    return None


@pytest.fixture(params=["cpu", "gpu"])
def platform(request):
    if request.param == "gpu":
        reason = gpu_skip_reason()
        if reason:
            pytest.skip(reason)
    device = jax.devices(request.param)[0]
    with jax.default_device(device):
        yield request.param


def assert_close(got, want, dtype=jnp.float32, scale=None, what="value"):
    """|got - want| <= tol · max(|want|) elementwise; prints the first mismatches."""
    got = np.asarray(jnp.asarray(got, jnp.float32))
    want = np.asarray(jnp.asarray(want, jnp.float32))
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    tol = TOL[jnp.dtype(dtype)] * (scale if scale is not None else max(np.abs(want).max(), 1e-30))
    bad = np.argwhere(~(np.abs(got - want) <= tol))
    if len(bad):
        lines = [f"  at {tuple(i)}: expected {want[tuple(i)]!r}, got {got[tuple(i)]!r}"
                 for i in bad[:5]]
        raise AssertionError(f"{what}: {len(bad)} of {want.size} elements differ by more than "
                             f"{tol:.3g}:\n" + "\n".join(lines))


def random(key, shape, dtype=jnp.float32, offset=0.0):
    """Normal values (never all zero), rounded to `dtype`."""
    return (jax.random.normal(key, shape, jnp.float32) + offset).astype(dtype)
