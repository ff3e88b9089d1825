"""Under jax.shard_map over 4 CPU devices, GRASS training equals one device on the
concatenated batch over several steps and refreshes: compressed gradients are averaged
across devices (never full ones) and every device selects the same rows and keeps the same
per-row Adam step counts (the state is replicated)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def run_script(script, devices, *args):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={devices}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE)] + sys.path)
    out = subprocess.run([sys.executable, str(HERE / script), str(devices)] +
                         [str(a) for a in args], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_check(dp_scores, method, steps=8, devices=4, refresh_mode="reset"):
    return run_script("dp_check.py", devices, steps, dp_scores, method, refresh_mode)


@pytest.mark.parametrize("method,refresh_mode", [("multinomial_nr", "reset"),
                                                 ("top_r", "reset"),
                                                 ("multinomial_nr", "carry")])
def test_data_parallel_equals_one_device(method, refresh_mode):
    r = run_check("exact", method, refresh_mode=refresh_mode)
    assert r["refreshes"] == 3  # steps 0, 3 and 6 chose new rows
    assert r["indices_equal"], "the devices chose other rows than one device would"
    assert r["row_steps_equal"], "the per-row Adam counts differ from one device's"
    assert r["replicas_agree"], "the devices disagree on the selected rows or their counts"
    if refresh_mode == "reset":  # 8 steps, last refresh at step 6: two steps since
        assert r["row_steps"] == [2] * 6, r
    assert r["loss"] < 1e-5, r
    assert r["params"] < 1e-5, r
    assert not r["full_gradient_all_reduce"], "an m x n gradient was all-reduced"


def test_data_parallel_sum_sq_scores_agree_across_devices():
    r = run_check("sum_sq", "multinomial_nr", steps=4)
    assert r["replicas_agree"]
    assert not r["full_gradient_all_reduce"]


def test_data_parallel_stacked_scan_with_clipping_equals_one_device():
    """Stacked weights under lax.scan (per-slice scores combined across devices inside the
    scan's backward) with max_grad_norm (the norm of the averaged gradients): 2 devices train
    like one."""
    r = run_script("dp_stacked_check.py", 2, 7)
    assert r["refreshes"] == 3
    assert r["indices_equal"], "the devices chose other rows than one device would"
    assert r["loss"] < 1e-5 and r["params"] < 1e-5, r


def test_clipping_with_sharded_state_equals_replicated():
    """max_grad_norm with shard_state (the compressed gradients reach the sharded step raw
    and are reduce-scattered there) clips by the same norm of the averaged gradients as the
    replicated state does: the same trajectory over 7 steps and 3 refreshes."""
    r = run_script("dp_clip_check.py", 2, 7)
    assert r["smallest_norm"] > 2 * r["max_norm"], r  # every step clipped
    assert r["params"] < 1e-5, r
