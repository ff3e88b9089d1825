"""examples/flax_lm runs: a few steps of the Flax trainer with grass (optax form and layer
path) and with optax.adamw, and a run interrupted, checkpointed with orbax and resumed ends
where the uninterrupted run ends."""

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("orbax.checkpoint")

SCRIPT = Path(__file__).resolve().parents[3] / "examples" / "flax_lm" / "train.py"
TINY = ["--steps", "5", "--batch", "4", "--seq-len", "32", "--d-model", "32"]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("flax_lm_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("opt", [["--optimizer", "grass"], ["--optimizer", "adamw"],
                                 ["--optimizer", "grass", "--compressed"]])
def test_example_trains_a_few_steps(example, opt):
    result, state = example.main(opt + TINY)
    assert int(state.step) == 5
    assert np.isfinite(result["val_loss"])
    assert result["train_loss_last"] < result["train_loss_first"]


def test_example_grass_optax_form_and_layer_path_agree(example):
    a, _ = example.main(["--optimizer", "grass"] + TINY)
    b, _ = example.main(["--optimizer", "grass", "--compressed"] + TINY)
    assert abs(a["val_loss"] - b["val_loss"]) < 1e-2 * a["val_loss"]


def test_example_resumes_from_its_orbax_checkpoint(example, tmp_path):
    _, straight = example.main(["--optimizer", "grass"] + TINY)
    ckpt = ["--checkpoint", str(tmp_path / "ckpt")]
    example.main(["--optimizer", "grass", "--stop-at", "3"] + TINY + ckpt)
    _, resumed = example.main(["--optimizer", "grass"] + TINY + ckpt)
    assert int(resumed.step) == 5
    for a, b in zip(jax.tree_util.tree_leaves(straight.params),
                    jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
