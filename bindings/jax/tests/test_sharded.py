"""Weights sharded along either axis under jit on 4 CPU devices (FSDP P('data', None), tensor
parallel P(None, 'model')), through grass layers (`step`) and the optax form (`update`), with
explicit mesh axes (jax.make_mesh's default: the params keep their sharding) and auto axes:
equal to the unsharded run within f32 tolerance. Each case runs sharded_check.py."""

import subprocess
import sys

import pytest

from test_distributed import HERE, env_for


@pytest.mark.parametrize("axes", ["explicit", "auto"])
@pytest.mark.parametrize("form", ["step", "update"])
def test_sharded_weights_equal_the_unsharded_run(axes, form):
    p = subprocess.run([sys.executable, str(HERE / "sharded_check.py"), axes, form],
                       env=env_for(4), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip().endswith("ok"), p.stdout + p.stderr
