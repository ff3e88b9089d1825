"""Shared fixtures. Every test that takes `platform` runs once on CPU and once on a GPU; the
GPU run skips, saying why, where JAX has no GPU or libgrass has no usable CUDA context.

On a GPU, JAX computes f32 matrix products in TF32 by default (Ampere and later: about 3e-4
relative error), while libgrass computes them in true f32; `reference_precision` makes the
references (and every JAX product of the test) true f32 there, so that the f32 tolerance below
compares like with like."""

import contextlib

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


def reference_precision(platform):
    """The matmul precision of the references on `platform`: "highest" (true f32) on a GPU,
    whose default is TF32; the CPU backend computes f32 products in f32 already."""
    if platform == "gpu":
        return jax.default_matmul_precision("highest")
    return contextlib.nullcontext()


def skip_hlo_structure_on_gpu(platform):
    """Checks of the compiled HLO's text (which instructions make an m x n value) are written
    against the CPU backend's HLO; the GPU compiler's fusions, layouts and copies differ. On a
    GPU the memory claim is checked by XLA's memory analysis (test_memory_below_adamw) and by
    the device peak of bench/bench_jax_memory.py instead."""
    if platform == "gpu":
        pytest.skip("HLO-structure check written against the CPU backend's HLO; on the GPU the "
                    "memory analysis and bench_jax_memory.py's device peak check the claim")


@pytest.fixture(params=["cpu", "gpu"])
def platform(request):
    if request.param == "gpu":
        reason = gpu_skip_reason()
        if reason:
            pytest.skip(reason)
    device = jax.devices(request.param)[0]
    with jax.default_device(device), reference_precision(request.param):
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
