"""`python -m grass_jax.memory`: the memory plan of a model from libgrass, as a table."""

import json
import subprocess
import sys

import pytest

from grass_jax import memory


def run(*args):
    return subprocess.run([sys.executable, "-m", "grass_jax.memory", *args], capture_output=True,
                          text=True, timeout=120)


def totals(stdout):
    """method -> total GiB from the printed table."""
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in ("grass", "AdamW", "GaLore"):
            out[parts[0]] = float(parts[-1])
    return out


@pytest.mark.parametrize("preset,weights_gib", [("llama-7b", 12.5), ("llama-13b", 24.2)])
def test_presets_print_a_table(preset, weights_gib):
    p = run("--model", preset, "--json")
    assert p.returncode == 0, p.stderr
    t = totals(p.stdout)
    assert set(t) == {"grass", "AdamW", "GaLore"}, p.stdout
    assert t["grass"] < t["GaLore"] < t["AdamW"], p.stdout
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert abs(rep["weight_bytes"] / 2**30 - weights_gib) < 0.1, rep["weight_bytes"]
    # AdamW: f32 M and V (8 bytes) and a bf16 gradient (2 bytes) per bf16 weight (2 bytes)
    assert rep["adamw_state_bytes"] == 4 * rep["weight_bytes"]
    assert rep["adamw_gradient_bytes"] == rep["weight_bytes"]
    assert 0 < rep["grass_workspace_bytes"] <= 64 << 20


def test_rank_changes_the_grass_state():
    small, big = (memory.plan(memory.PRESETS["llama-7b"](r)) for r in (256, 1024))
    assert small["grass_state_bytes"] < big["grass_state_bytes"]
    assert small["weight_bytes"] == big["weight_bytes"]
    assert small["adamw_total_bytes"] == big["adamw_total_bytes"]


def test_json_file(tmp_path):
    model = {"name": "tiny", "max_tokens": 64, "state_dtype": "bf16",
             "dense_state_dtype": "bf16", "rank": 8,
             "matrices": [{"m": 64, "n": 32, "count": 3}, {"m": 32, "n": 96, "rank": 16,
                                                           "side": "rows", "w_dtype": "f32"}],
             "dense": [{"name": "embed", "numel": 1000, "count": 2}]}
    f = tmp_path / "model.json"
    f.write_text(json.dumps(model))
    p = run("--model", str(f), "--json")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("tiny: memory plan")
    rep = json.loads(p.stdout.strip().splitlines()[-1])
    assert rep == memory.plan(model)
    assert rep["weight_bytes"] == 2 * 64 * 32 * 3 + 4 * 32 * 96 + 2 * 1000 * 2
    # GaLore: bf16 M and V (r x k) per projected matrix, 2 x numel for the dense ones
    assert rep["galore_state_bytes"] == 2 * 2 * (8 * 32 * 3 + 16 * 96) + 2 * 2 * 2000
    # without dense_state_dtype: the library's, f32, for GaLore, AdamW and the dense parameters
    f32 = memory.plan({k: v for k, v in model.items() if k != "dense_state_dtype"})
    assert f32["galore_state_bytes"] == 2 * rep["galore_state_bytes"]
    assert f32["adamw_state_bytes"] == 2 * rep["adamw_state_bytes"]
    assert f32["grass_state_bytes"] > rep["grass_state_bytes"]


@pytest.mark.parametrize("content,says", [
    ("{not json", "not valid JSON"),
    ("[]", "model must be an object"),
    ('{"matrices": []}', "matrices must be a non-empty list"),
    ('{"matrices": [{"m": 64}]}', "matrices[0] needs 'n'"),
    ('{"matrices": [{"m": 64, "n": 0}]}', "matrices[0].n must be an integer >= 1"),
    ('{"matrices": [{"m": 64, "n": 32, "rank": 65}]}', "layers[0].rank = 65"),
    ('{"matrices": [{"m": 64, "n": 32}], "act_dtype": "f64"}', "act_dtype must be one of"),
    ('{"matrices": [{"m": 64, "n": 32, "colour": 1}]}', "unknown key 'colour'"),
    ('{"matrices": [{"m": 64, "n": 32}], "dense": [{"count": 1}]}', "dense[0] needs 'numel'"),
])
def test_bad_file_is_one_clear_line(tmp_path, content, says):
    f = tmp_path / "bad.json"
    f.write_text(content)
    p = run("--model", str(f))
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert says in lines[0] and str(f) in lines[0], lines[0]
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_missing_file_is_one_clear_line(tmp_path):
    p = run("--model", str(tmp_path / "absent.json"))
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "cannot read it" in p.stderr


def test_rank_rule_is_the_default_of_a_model_file():
    """A matrix with no rank anywhere gets the rank rule of its d, as grass_adamw(rank=None)."""
    from grass_jax import _lib
    base = {"max_tokens": 64, "matrices": [{"m": 64, "n": 200, "side": "cols"}]}
    rule = memory.plan(base)
    explicit = memory.plan({**base, "rank": _lib.default_rank(200)})
    assert _lib.default_rank(200) == 104
    assert rule == explicit
    assert memory.plan({**base, "rank": 8})["grass_state_bytes"] < rule["grass_state_bytes"]


@pytest.mark.parametrize("state_dtype", ["float32", "bfloat16"])
def test_optimizer_state_bytes_match_the_planner(state_dtype):
    """model_of(opt, params): the planner's grass state bytes are what init allocates (M, V and
    the step counters of each GRASS weight at its own rule rank; M, V and two counters of each
    dense leaf), counted at the planner's 8-byte granularity on a CPU context."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import grass_jax as gj

    ks = jax.random.split(jax.random.PRNGKey(0), 6)
    params = {"a": jax.random.normal(ks[0], (40, 96)), "b": jax.random.normal(ks[1], (16, 40)),
              "c": jax.random.normal(ks[2], (24, 6)),
              "stack": jax.random.normal(ks[3], (3, 8, 200)),
              "embed": jax.random.normal(ks[4], (50, 12)), "gain": jax.random.normal(ks[5], (12,))}
    opt = gj.grass_adamw(1e-3, grass_mask=lambda path, leaf: leaf.ndim >= 2 and
                         path[0].key != "embed", stacked=lambda path, leaf: leaf.ndim - 2 if
                         leaf.ndim > 2 else 0, state_dtype=jnp.dtype(state_dtype))
    model = memory.model_of(opt, params, max_tokens=32, act_dtype="f32")
    assert {m["name"]: (m["rank"], m["count"]) for m in model["matrices"]} == {
        "['a']": (48, 1), "['b']": (24, 1), "['c']": (6, 1), "['stack']": (104, 3)}
    state = opt.init(params)
    held = lambda b: -(-int(b) // 8) * 8  # noqa: E731  (a CPU context's allocation unit)
    want = 0
    for ls in jax.tree_util.tree_leaves(state.layers, is_leaf=lambda x: hasattr(x, "row_steps")):
        if not hasattr(ls, "row_steps"):
            continue
        slices = int(np.prod(ls.skipped.shape, dtype=np.int64)) if ls.skipped.shape else 1
        counters = (ls.row_steps.nbytes + ls.skipped.nbytes) // slices  # i32[1 + r] per slice
        want += slices * (held(ls.m.nbytes // slices) * 2 + held(counters))
    dense = [ds for ds in jax.tree_util.tree_leaves(
        state.dense, is_leaf=lambda x: isinstance(x, gj.DenseAdamWState))
        if isinstance(ds, gj.DenseAdamWState)]
    assert len(dense) == 2
    for ds in dense:
        want += held(ds.m.nbytes) + held(ds.v.nbytes) + held(ds.step.nbytes + ds.skipped.nbytes)
    assert memory.plan(model)["grass_state_bytes"] == want
