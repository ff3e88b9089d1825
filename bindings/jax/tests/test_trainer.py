"""`python -m grass_jax.train` on a tiny model for a few steps: every optimizer's loss falls,
the table, PNG and JSON are written, a resumed run continues bit-identically, and bad options
get one line and a non-zero exit."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from grass_jax import train

# A model small enough to compile and run in seconds.
TINY = ["--d-model", "32", "--layers", "1", "--heads", "2", "--ffn", "64", "--seq-len", "32",
        "--batch", "8", "--warmup", "2", "--eval-batches", "2", "--rank", "8",
        "--refresh-every", "5", "--no-progress"]


def run(argv, capsys=None):
    code = train.main(TINY + argv)
    out = capsys.readouterr() if capsys is not None else None
    return code, out


def test_compare_trains_and_writes_the_results(tmp_path, capsys):
    out = tmp_path / "out"
    code, cap = run(["--steps", "24", "--eval-every", "8", "--lr", "1e-2", "--out", str(out)],
                    capsys)
    assert code == 0, cap.err
    summary = json.loads((out / "results.json").read_text())
    res = {r["optimizer"]: r for r in summary["results"]}
    assert list(res) == ["grass", "adamw", "galore"]
    for name, r in res.items():
        curve = r["train_curve"]
        assert len(curve) == 24 and all(np.isfinite(curve)), name
        assert np.mean(curve[-4:]) < np.mean(curve[:2]) - 0.5, (name, curve)
        assert [s for s, _ in r["val_curve"]] == [8, 16, 24], name
        assert r["final_val_loss"] < np.log(256) - 0.5, (name, r["final_val_loss"])
        assert r["bits_per_byte"] == pytest.approx(r["final_val_loss"] / np.log(2))
        assert r["tokens_per_s"] > 0 and r["wall_s"] > 0
    # GaLore's rank was chosen to match grass's state bytes; both are printed
    g, a, q = res["grass"], res["adamw"], res["galore"]
    assert abs(q["state_bytes"] - g["state_bytes"]) < 0.2 * g["state_bytes"]
    assert g["state_bytes"] < a["state_bytes"]
    assert f"grass rank 8 {g['state_bytes']:,} bytes" in cap.out
    assert f"GaLore rank {q['rank']} {q['state_bytes']:,} bytes" in cap.out
    # weight-gradient bytes: grass holds r x k per weight (default side "cols": k = m, so
    # 32 for the attention weights and w_down, 64 for w_gate and w_up), the others m x n
    assert g["weight_grad_bytes"] == 4 * (4 * 8 * 32 + 2 * 8 * 64 + 8 * 32)
    assert a["weight_grad_bytes"] == q["weight_grad_bytes"] == 4 * (4 * 32 * 32 + 3 * 64 * 32)
    # the table (stdout and results.md) has a row per optimizer; the PNG is a real image
    for name in res:
        assert f"| {name}" in cap.out
    assert (out / "results.md").read_text().count("\n| ") >= 4
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def load_run(folder, name):
    arrays = {}
    for part in ("params", "state"):
        with np.load(folder / name / f"{part}.npz") as f:
            arrays.update({f"{part}/{k}": f[k] for k in f.files})
    return arrays, json.loads((folder / name / "progress.json").read_text())


def test_resumed_run_is_bit_identical(tmp_path, capsys):
    common = ["--optimizers", "grass,galore", "--steps", "10", "--eval-every", "5", "--lr",
              "1e-2", "--refresh-every", "3", "--refresh-mode", "carry"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run(common + ["--save", str(whole), "--out", str(tmp_path / "o1")])[0] == 0
    assert run(common + ["--save", str(part), "--stop-at", "4", "--out",
                         str(tmp_path / "o2")])[0] == 0
    stopped = json.loads((part / "grass" / "progress.json").read_text())
    assert stopped["step"] == 4
    # a resumed run takes its options from the folder; changing one is refused
    assert train.main(["--resume", str(part), "--lr", "3e-3", "--no-progress"]) == 2
    assert "saved run has lr" in capsys.readouterr().err
    code = train.main(["--resume", str(part), "--no-progress", "--out", str(tmp_path / "o3")])
    assert code == 0, capsys.readouterr().err
    for name in ("grass", "galore"):
        a, pa = load_run(whole, name)
        b, pb = load_run(part, name)
        assert pa["step"] == pb["step"] == 10
        assert pa["train_loss"] == pb["train_loss"], name
        assert pa["val"] == pb["val"], name
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name} {k}")
    res = json.loads((tmp_path / "o3" / "results.json").read_text())["results"]
    assert all(len(r["train_curve"]) == 10 for r in res)


@pytest.mark.parametrize("argv, says", [
    (["--method", "top_k"], "argument --method: invalid choice: 'top_k'"),
    (["--refresh-mode", "keep"], "argument --refresh-mode: invalid choice"),
    (["--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    (["--optimizers", "grass,sgd"], "unknown optimizer 'sgd'"),
    (["--rank", "33"],
     "--rank 33 exceeds the projected dimension 32 of blocks.0.w_gate (64 x 32, side cols)"),
    (["--rank", "65", "--side", "rows"],
     "--rank 65 exceeds the projected dimension 32 of blocks.0.w_down (32 x 64, side rows)"),
    (["--rank", "0"], "--rank: 0 must be a positive integer"),
    (["--lr", "-1"], "--lr: -1 must be a finite number > 0"),
    (["--galore-rank", "40"], "--galore-rank 40 exceeds"),
    (["--heads", "3"], "d_model 32 is not a multiple of heads 3"),
    (["--stop-at", "99"], "--stop-at 99 is after the last step"),
    (["--resume", "/nonexistent/run"], "no config.json"),
    (["--residual", "fira"], "--residual fira: grass (the library) has none and sign"),
    (["--rank-alloc", "fraction"], "--rank-alloc applies to the research optimizer grass_ref only"),
    (["--state-rounding", "stochastic"],
     "--state-rounding applies to the research optimizer grass_ref only"),
    (["--second-moment", "row"],
     "--second-moment applies to the research optimizer grass_ref only"),
    (["--first-moment-dtype", "bfloat16"],
     "--first-moment-dtype applies to the research optimizer grass_ref only"),
    (["--method", "cyclic"], "--method cyclic is a research rule of grass_ref only"),
    (["--row-warmup", "-2"], "--row-warmup"),
    (["--seq-len", "100000000"], "--seq-len 100000000 is longer than the training text"),
])
def test_bad_options_are_one_line(tmp_path, capsys, argv, says):
    out = tmp_path / "out"
    code, cap = run(["--steps", "4", "--out", str(out)] + argv, capsys)
    assert code == 2
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], cap.err
    assert lines[0].startswith("python -m grass_jax.train: error:")
    assert not out.exists()  # nothing written


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for option in ("--out", "--save"):
        code, cap = run(["--steps", "4", option, str(blocker / "sub")], capsys)
        assert code == 2
        lines = cap.err.strip().splitlines()
        assert len(lines) == 1 and f"{option} {blocker / 'sub'}: cannot write there" in lines[0]


def test_command_line_error_has_no_traceback():
    """The real command: a bad preset is one line on stderr and exit status 2."""
    proc = subprocess.run([sys.executable, "-m", "grass_jax.train", "--preset", "tpu-huge"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "python -m grass_jax.train: error: argument --preset: invalid choice: 'tpu-huge'"), lines
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_galore_keeps_its_own_refresh_period():
    """grass's K is the library's (50 since 0.7); GaLore's SVD period stays optax's 200 unless
    given, and a config saved by 0.6 (0: "grass's") still gets grass's K."""
    import dataclasses
    from grass_jax import _lib
    cfg = train.make_config({})
    assert cfg.refresh_every == _lib.defaults()["refresh_every"] == 50
    assert train.galore_refresh_every(cfg) == 200
    assert train.galore_refresh_every(train.make_config({"galore_refresh_every": 30})) == 30
    old = dataclasses.replace(cfg, galore_refresh_every=0, refresh_every=200)
    assert train.galore_refresh_every(old) == 200
    assert train.galore_refresh_every(dataclasses.replace(old, refresh_every=70)) == 70


def test_short_run_scales_the_warmup(tmp_path, capsys):
    """--steps 10 without --warmup: the preset's warm-up (a tenth of its steps) scales down
    to one step instead of refusing the run; the schedule still reaches its peak."""
    i = TINY.index("--warmup")
    argv = TINY[:i] + TINY[i + 2:]
    cfg = train.make_config({"steps": 10})
    assert cfg.warmup == 1
    assert train.make_config({"steps": 10, "preset": "long"}).warmup == 1
    assert train.make_config({"preset": "long"}).warmup == 150
    assert train.make_config({"steps": 10, "warmup": 3}).warmup == 3
    lr = train.schedule_fn(cfg, 1.0)
    assert float(lr(0)) == pytest.approx(1.0) and float(lr(9)) == pytest.approx(0.1)
    code = train.main(argv + ["--optimizers", "adamw", "--steps", "10", "--eval-every", "5",
                              "--out", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["config"]["warmup"] == 1 and res["partial"] is False


def test_long_preset_has_twenty_times_the_tokens():
    tokens = lambda p: train.PRESETS[p]["steps"] * train.PRESETS[p]["batch"] * \
        train.PRESETS[p]["seq_len"]
    assert tokens("long") >= 20 * tokens("cpu")
    assert train.make_config({"preset": "long"}).model() == train.make_config({}).model()._replace(
        seq_len=128)


def test_resume_without_a_checkpoint_is_refused(tmp_path, capsys):
    """An empty folder, or one whose run stopped before its first save, is refused: the run
    would silently start from step 0. Nothing is written."""
    empty = tmp_path / "empty"
    empty.mkdir()
    code, cap = run(["--resume", str(empty), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "no config.json" in cap.err
    (empty / "config.json").write_text(json.dumps(
        __import__("dataclasses").asdict(train.make_config({}))))
    code, cap = run_resume(empty, tmp_path / "o", capsys)
    assert code == 2
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and "no checkpoint there" in lines[0], cap.err
    assert not (tmp_path / "o").exists()


def run_resume(folder, out, capsys):
    code = train.main(["--resume", str(folder), "--no-progress", "--out", str(out)])
    return code, capsys.readouterr()


def test_refused_run_leaves_no_folder(tmp_path, capsys):
    """A refusal after the output folders were made (here: --save cannot be written) takes
    away the folders the run made, parents included."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = tmp_path / "new" / "out"
    code, cap = run(["--steps", "4", "--out", str(out), "--save", str(blocker / "sub")], capsys)
    assert code == 2 and "--save" in cap.err
    assert not (tmp_path / "new").exists()


def test_stopped_run_is_marked_partial(tmp_path, capsys):
    out = tmp_path / "o"
    code, cap = run(["--optimizers", "adamw", "--steps", "8", "--eval-every", "4",
                     "--stop-at", "4", "--out", str(out)], capsys)
    assert code == 0, cap.err
    assert "(partial: step 4 of 8)" in cap.out and "stopped at step 4 of 8" in cap.out
    assert "PARTIAL: stopped at step 4 of 8" in (out / "results.md").read_text()
    assert "(partial: step 4 of 8)" in (out / "results.md").read_text()
    assert json.loads((out / "results.json").read_text())["partial"] is True


def test_seq_len_longer_than_the_validation_text(tmp_path, capsys):
    from grass_jax.data import load_corpus
    n = load_corpus().valid.size
    out = tmp_path / "o"
    code, cap = run(["--steps", "4", "--seq-len", str(n), "--out", str(out)], capsys)
    assert code == 2
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and f"--seq-len {n}: the validation text ({n:,} bytes) is too " \
        f"short for --eval-batches 2 x --batch 8 windows" in lines[0], cap.err
    assert f"(use --seq-len <= {n - 17})" in lines[0]
    assert not out.exists()


def test_research_twin_runs_beside_grass(tmp_path, capsys):
    """grass_ref (the jnp twin) with no research option takes grass's steps: the same train
    losses to f32 rounding and the same state bytes; with the signSGD residual it trains."""
    out = tmp_path / "o"
    common = ["--steps", "8", "--eval-every", "4", "--lr", "1e-2"]
    code, cap = run(common + ["--optimizers", "grass,grass_ref", "--out", str(out)], capsys)
    assert code == 0, cap.err
    res = {r["optimizer"]: r for r in json.loads((out / "results.json").read_text())["results"]}
    g, t = res["grass"], res["grass_ref"]
    np.testing.assert_allclose(t["train_curve"], g["train_curve"], rtol=1e-4)
    assert t["state_bytes"] == g["state_bytes"]
    code, cap = run(common + ["--optimizers", "grass_ref", "--residual", "sign",
                              "--residual-scale", "0.1", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, cap.err
    r = json.loads((tmp_path / "r" / "results.json").read_text())
    assert r["config"]["residual"] == "sign"
    curve = r["results"][0]["train_curve"]
    assert np.mean(curve[-2:]) < np.mean(curve[:2]) - 0.3, curve


def test_library_residual_takes_the_twins_steps(tmp_path, capsys):
    """--residual sign on grass (libgrass, X and dY handed over) and on grass_ref (the jnp twin
    on full gradients) train alike: the same train losses to rounding, the same state bytes;
    the library's run counts the X and dY it holds in "W-grad held"."""
    out = tmp_path / "o"
    common = ["--steps", "8", "--eval-every", "4", "--lr", "1e-2", "--residual", "sign"]
    code, cap = run(common + ["--optimizers", "grass,grass_ref", "--out", str(out)], capsys)
    assert code == 0, cap.err
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["residual"] == "sign" and doc["config"]["residual_scale"] == 0.1
    res = {r["optimizer"]: r for r in doc["results"]}
    g, t = res["grass"], res["grass_ref"]
    np.testing.assert_allclose(t["train_curve"], g["train_curve"], rtol=1e-4)
    assert t["state_bytes"] == g["state_bytes"]
    tokens = doc["config"]["batch"] * doc["config"]["seq_len"]
    code, cap = run(["--steps", "4", "--eval-every", "2", "--optimizers", "grass", "--out",
                     str(tmp_path / "p")], capsys)
    assert code == 0, cap.err
    plain = json.loads((tmp_path / "p" / "results.json").read_text())["results"][0]
    held = g["weight_grad_bytes"] - plain["weight_grad_bytes"]
    assert held > 0 and held % (tokens * 4) == 0


def test_row_warmup_reaches_the_library_and_the_twin(tmp_path, capsys):
    """--row-warmup on grass (libgrass) and grass_ref (the twin) trains alike, is recorded in
    the results, and changes the run against the default (the library's 10)."""
    common = ["--steps", "8", "--eval-every", "4", "--lr", "1e-2", "--refresh-every", "4"]
    out = tmp_path / "w"
    code, cap = run(common + ["--row-warmup", "3", "--optimizers", "grass,grass_ref", "--out",
                              str(out)], capsys)
    assert code == 0, cap.err
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["row_warmup"] == 3
    res = {r["optimizer"]: r for r in doc["results"]}
    np.testing.assert_allclose(res["grass_ref"]["train_curve"], res["grass"]["train_curve"],
                               rtol=1e-4)
    code, cap = run(common + ["--optimizers", "grass", "--out", str(tmp_path / "p")], capsys)
    assert code == 0, cap.err
    plain = json.loads((tmp_path / "p" / "results.json").read_text())
    assert plain["config"]["row_warmup"] == 10
    assert plain["results"][0]["train_curve"][-1] != res["grass"]["train_curve"][-1]
