"""GRASS data parallel across processes (jax.distributed, CPU collectives through gloo) and
with the optimizer state sharded over the data axis (ZeRO-1), against one process.

Each case runs dist_check.py: 4 devices in one process, or 2 processes with 2 devices each on
one global mesh of 4, training 7 steps with refreshes at steps 0, 3 and 6."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "dist_check.py"


def env_for(devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        f" --xla_force_host_platform_device_count={devices}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE)] + sys.path)
    return env


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_one(out, shard, refresh_mode="reset", method="multinomial_nr"):
    """One process with 4 devices."""
    p = subprocess.run([sys.executable, str(SCRIPT), "train", str(out), str(int(shard)),
                        refresh_mode, method], env=env_for(4), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return dict(np.load(out))


def run_processes(out, shard, refresh_mode="reset", method="multinomial_nr", seeds=(0, 0)):
    """Two processes with 2 devices each; returns (their return codes, outputs, results of
    process 0 or None)."""
    port = free_port()
    procs = [subprocess.Popen([sys.executable, str(SCRIPT), "train", str(out), str(int(shard)),
                               refresh_mode, method, str(pid), "2", str(port), str(seed)],
                              env=env_for(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for pid, seed in enumerate(seeds)]
    outputs, codes = [], []
    for p in procs:
        try:
            so, se = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("a process did not finish in 300 s: a hang")
        outputs.append(so + se)
        codes.append(p.returncode)
    return codes, outputs, (dict(np.load(out)) if os.path.exists(out) else None)


FIELDS = ("loss", "w_embed", "w_up", "w_up_bias", "w_down", "w_head", "indices_up",
          "indices_down", "scales_up", "m_up", "v_up", "m_down", "v_down", "row_steps_up",
          "row_steps_down", "refresh_count_up", "skipped_up")


# Across processes the all-reduces go through gloo, which adds the 4 devices' contributions
# in another order than XLA's in-process CPU all-reduce; f32 addition is not associative, so
# the averaged gradients differ in their last bits (measured: 2-4e-7 relative for M and V,
# <= 1.1e-7 for weights and losses after 7 steps). Selections, step counts and outcomes stay
# exact; floats must agree to RTOL of each field's largest magnitude.
RTOL = 2e-6


def differences(a, b, rtol=0.0):
    """Fields that differ (bit for bit with rtol 0, else by more than rtol · max |b|), with
    their largest difference. Integer fields are always compared exactly."""
    out = {}
    for f in FIELDS:
        x, y = np.asarray(a[f]), np.asarray(b[f])
        assert x.shape == y.shape, (f, x.shape, y.shape)
        if x.tobytes() == y.tobytes():
            continue
        diff = float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max())
        exact = rtol == 0 or not np.issubdtype(y.dtype, np.floating)
        if exact or diff > rtol * float(np.abs(y).max()):
            out[f] = diff
    return out


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-process 4-device runs everything is compared with, unsharded and sharded."""
    d = tmp_path_factory.mktemp("single")
    return {shard: run_one(d / f"one_{int(shard)}.npz", shard) for shard in (False, True)}


def test_two_processes_equal_one_process(single, tmp_path):
    codes, outs, got = run_processes(tmp_path / "two.npz", shard=False)
    assert codes == [0, 0], "\n".join(outs)
    assert int(got["refresh_count_up"]) == 3
    assert differences(got, single[False], RTOL) == {}, "2 x 2 devices differ from 1 x 4"
    # The reason for the tolerance: the all-reduces add the devices in different orders
    # (sums of the same mixed-magnitude values differ in their last bits). Where they add in
    # the same order, nothing else may differ.
    same_order = got["sum_order"].tobytes() == single[False]["sum_order"].tobytes()
    if same_order:
        assert differences(got, single[False]) == {}
    print(f"all-reduce sums that differ between 1 x 4 and 2 x 2 devices: "
          f"{np.mean(got['sum_order'] != single[False]['sum_order']):.1%}")


def test_sharded_state_equals_replicated(single):
    ref, got = single[False], single[True]
    assert int(got["refresh_count_up"]) == 3
    assert differences(got, ref) == {}, "the sharded optimizer state changed the training"
    # Optimizer memory per device falls by the 4 devices: M, V (the default state dtype) and
    # row_steps (i32) of r / 4 rows on each device instead of r. The default side "cols"
    # projects the input columns, so k = m: 48 for "up" (48 x 24), 8 for "down" (8 x 48).
    from grass_jax import _lib
    size = {"float32": 4, "bfloat16": 2}[_lib.defaults()["state_dtype"]]
    for name, k in (("up", 48), ("down", 8)):
        full = 8 * (2 * k * size + 4)
        assert ref[f"state_bytes_{name}"].tolist() == [full] * 4
        assert got[f"state_bytes_{name}"].tolist() == [full // 4] * 4


def test_sharded_state_two_processes(single, tmp_path):
    codes, outs, got = run_processes(tmp_path / "two.npz", shard=True)
    assert codes == [0, 0], "\n".join(outs)
    assert differences(got, single[True], RTOL) == {}


def test_sharded_carry_equals_replicated(tmp_path):
    ref = run_one(tmp_path / "rep.npz", False, refresh_mode="carry", method="top_r")
    got = run_one(tmp_path / "sh.npz", True, refresh_mode="carry", method="top_r")
    # carry kept some rows across refreshes (their counts exceed the 1 step since the last
    # refresh), moving them between positions and so between the devices' shares
    assert ref["row_steps_up"].max() > 1 and ref["row_steps_up"].min() == 1
    assert differences(got, ref) == {}


def test_processes_with_different_seeds_fail_clearly(tmp_path):
    codes, outs, _ = run_processes(tmp_path / "bad.npz", shard=False, seeds=(0, 1))
    for pid, (code, out) in enumerate(zip(codes, outs)):
        assert code != 0, f"process {pid} ran with another process's seed:\n{out}"
        assert "ProcessMismatchError" in out and "seed (process 0: 0 vs process 1: 1)" in out, out


def run_comm(what):
    p = subprocess.run([sys.executable, str(HERE / "comm_check.py"), what], env=env_for(4),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])[what]


def test_bytes_handed_to_collectives():
    """Per layer and step, counted from the traced step: GRASS all-reduces r x k where dense
    data parallel all-reduces m x n; sharding the state moves no more bytes on a ring; at a
    refresh "exact" adds one m x n all-reduce (in chunks), "sum_sq" d floats."""
    from comm_check import LAYERS, N_DEV, RANK, ring_bytes
    t = run_comm("traffic")
    import grass_jax as gj
    for name, (m, n) in LAYERS.items():
        _, d, k = gj.ops.resolve_side(m, n)
        g, full = RANK * k * 4, m * n * 4
        assert t["dense"][name]["handed"] == full
        assert t["grass_plain"][name]["handed"] == g, t["grass_plain"][name]
        assert t["grass_refresh"][name]["handed"] == full + g, t["grass_refresh"][name]
        assert t["grass_sum_sq_refresh"][name]["handed"] == d * 4 + g
        # sharded: a reduce-scatter of g and an all-gather of the device's r/N rows
        assert t["grass_sharded_plain"][name]["handed"] == g + g // N_DEV
        assert t["grass_sharded_plain"][name]["ring"] <= t["grass_plain"][name]["ring"]
        assert t["grass_plain"][name]["ring"] == ring_bytes("psum", g, N_DEV)
    # besides the layers: the dense leaf's gradient and the loss, and with sharded state one
    # i32 per GRASS layer (did any device see a non-finite gradient)
    assert t["grass_sharded_plain"]["other"]["handed"] == t["grass_plain"]["other"]["handed"] + 8


def test_score_combination_selects_like_the_full_batch():
    """"exact" selects the rows one device selects from the full batch's gradient; "sum_sq"
    (d floats on the wire) an approximation, measured here (the README quotes the numbers)."""
    q = run_comm("quality")
    for key, value in q.items():
        if key.endswith("_exact"):
            assert value == 1.0, (key, q)
    assert all(q[k] < 1.0 for k in q if k.endswith("_sum_sq")), q
    print(json.dumps(q))


def test_sharded_step_skips_on_every_device_when_one_share_is_not_finite():
    p = subprocess.run([sys.executable, str(SCRIPT), "nonfinite"], env=env_for(4),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    ok, bad = r["finite"], r["nonfinite"]
    # finite: the sharded step is the unsharded op on the mean gradient, bit for bit
    assert ok["skipped"] == [0] * 4 and ok["w_changed"], ok
    assert ok["w_max_diff"] == ok["m_max_diff"] == ok["v_max_diff"] == 0.0, ok
    assert ok["steps"] == [4] * 16
    # one NaN in the last device's rows: all four devices skip, nothing is written
    assert bad["want_skipped"] == 1
    assert bad["skipped"] == [1] * 4, bad
    assert not bad["w_changed"] and bad["steps"] == [3] * 16, bad
    assert bad["w_max_diff"] == bad["m_max_diff"] == bad["v_max_diff"] == 0.0, bad
    assert "rank 6 is not a multiple of the 4 devices" in r["odd_rank_error"], r


@pytest.mark.parametrize("kw,words", [
    (dict(), "needs axis_name"),
    (dict(axis_name="data", method="multinomial"), "selects distinct rows"),
    (dict(axis_name="data", decay_mode="dense", weight_decay=0.1), "decay_mode='dense'"),
])
def test_shard_state_refuses_what_it_cannot_do(kw, words):
    import grass_jax as gj
    with pytest.raises(ValueError, match=words):
        gj.grass_adamw(1e-3, grass_mask=lambda path, leaf: True, shard_state=True, **kw)


def test_fingerprint_names_what_differs():
    """The fields the processes compare, from real optimizers (no processes needed)."""
    import jax
    import grass_jax as gj
    from grass_jax import consistency
    import model

    params = model.init_params(jax.random.PRNGKey(0))
    kw = dict(grass_mask=model.GRASS_MASK, rank=8, refresh_every=3)
    base = gj.grass_adamw(1e-3, **kw)

    def table(other, params_other=params, state=None, state_other=None):
        return np.stack([consistency.fingerprint(base, params, state),
                         consistency.fingerprint(other, params_other, state_other)])

    assert consistency.mismatches(table(gj.grass_adamw(1e-3, **kw))) == []
    assert consistency.mismatches(table(gj.grass_adamw(1e-3, **dict(kw, seed=5)))) == [
        "seed (process 0: 0 vs process 1: 5)"]
    assert consistency.mismatches(table(gj.grass_adamw(1e-3, **dict(kw, refresh_every=4)))) \
        == ["refresh_every (process 0: 3 vs process 1: 4)"]
    assert consistency.mismatches(table(gj.grass_adamw(1e-3, **dict(kw, rank=6)))) == [
        "weight shapes (process 0 vs process 1) [fingerprints differ]",
        "rank (process 0: 8 vs process 1: 6)"]
    wider = dict(params, up=np.zeros((50, 24), np.float32))
    assert consistency.mismatches(table(base, wider))[0].startswith("weight shapes")
    state = base.init(params)
    later = state._replace(count=state.count + 1)
    assert consistency.mismatches(table(base, state=state, state_other=later)) == [
        "step count (process 0: 0 vs process 1: 1)"]


def test_sharded_step_writes_rows_into_w_in_place():
    """The all-gathered rows go into the donated W by a scatter: no copy of W, and no more
    scratch than the replicated step (activations and the r x k gradient) beyond r x k."""
    p = subprocess.run([sys.executable, str(SCRIPT), "memory"], env=env_for(4),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    rep, sh = r["replicated"], r["sharded"]
    assert "copy" not in sh["mn_producers"], sh
    assert sh["temp_bytes"] < sh["mn_bytes"] // 4, sh
    # scratch grows by the gathered rows and the shares' work buffers: 32 x 1024 f32 (128 KiB)
    assert sh["temp_bytes"] - rep["temp_bytes"] <= 32 * 1024 * 4, (sh, rep)
