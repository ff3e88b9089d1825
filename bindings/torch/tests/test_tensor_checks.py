"""Every tensor the PyTorch binding hands to libgrass is checked first (dtype, shape,
contiguity, device), with an error naming it, because libgrass reads exactly the elements its
sizes imply from the address it gets: a transposed gradient would be misread silently.

The check itself runs on numpy arrays here (a transposed numpy view is as strided as a torch
one); the ops are exercised with torch tensors where torch is installed."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import grass_torch as gt  # noqa: E402


def test_check_accepts_a_matching_array_and_returns_its_shape():
    a = np.zeros((3, 4), np.float32)
    assert gt._check("g", a, ("float32",), (3, None), "cpu") == (3, 4)


@pytest.mark.parametrize("array, shape, dtypes, device, error, needle", [
    (np.zeros((4, 3), np.float32).T, (3, 4), ("float32",), "cpu", ValueError, "g must be contiguous"),
    (np.zeros((3, 4), np.float64), (3, 4), ("float32",), "cpu", TypeError, "g must be float32, got float64"),
    (np.zeros((3, 5), np.float32), (3, 4), ("float32",), "cpu", ValueError, "g must have shape (3, 4), got (3, 5)"),
    (np.zeros((12,), np.float32), (3, 4), ("float32",), "cpu", ValueError, "g must have shape (3, 4)"),
    (np.zeros((3, 4), np.float32), (3, 4), ("float32",), "cuda:0", ValueError, "g is on cpu"),
    (np.zeros((3, 8), np.float32)[:, ::2], (3, None), ("float32",), "cpu", ValueError, "contiguous"),
    (np.zeros((3,), np.int64), (3,), ("int32",), "cpu", TypeError, "g must be int32, got int64"),
])
def test_check_rejects_with_a_message_naming_the_tensor(array, shape, dtypes, device, error, needle):
    with pytest.raises(error) as e:
        gt._check("g", array, dtypes, shape, device)
    assert needle in str(e.value), str(e.value)


def test_counts_are_int32_of_the_right_length():
    gt._counts("row_steps", np.zeros(4, np.int32), 4)
    for bad in (np.zeros(3, np.int32), np.zeros(4, np.int64), np.zeros((4, 2), np.int32)[:, 0]):
        with pytest.raises((TypeError, ValueError), match="row_steps"):
            gt._counts("row_steps", bad, 4)


# ---- the ops on torch tensors ---------------------------------------------------------------
def _torch():
    return pytest.importorskip("torch", reason="torch not installed: op-level tensor checks skipped")


def test_ops_reject_bad_tensors_before_calling_libgrass():
    torch = _torch()
    ops = gt.Torch(gt.Lib())
    m, n, b, r = 12, 8, 5, 4
    x, dy = torch.randn(b, n), torch.randn(b, m)
    idx = torch.tensor([0, 2, 5, 7], dtype=torch.int32)
    rho = torch.ones(r)
    with pytest.raises(ValueError, match="x must be contiguous"):
        ops.row_scores(torch.randn(n, b).t(), dy, gt.SIDE_ROWS)
    with pytest.raises(TypeError, match="dy must be float32, got bfloat16"):
        ops.row_scores(x, dy.bfloat16(), gt.SIDE_ROWS)
    with pytest.raises(ValueError, match=r"dy must have shape \(5, \*\)"):
        ops.sparse_grad(x, torch.randn(b + 1, m), idx, rho, gt.SIDE_ROWS)
    with pytest.raises(TypeError, match="idx must be int32, got int64"):
        ops.sparse_grad(x, dy, idx.long(), rho, gt.SIDE_ROWS)
    acfg = ops.lib.adamw_config()
    w = torch.randn(m, n)
    w0 = w.clone()
    g = torch.randn(r, n)
    ms, vs, steps = torch.zeros(r, n), torch.zeros(r, n), torch.zeros(r, dtype=torch.int32)
    # a transposed gradient: right shape, wrong memory order
    gt_ = torch.randn(n, r).t()
    with pytest.raises(ValueError, match="g must be contiguous"):
        ops.sparse_adamw_step(acfg, w, idx, rho, gt_, ms, vs, steps, 0.1, gt.SIDE_ROWS)
    with pytest.raises(ValueError, match=r"m_state must have shape \(4, 8\)"):
        ops.sparse_adamw_step(acfg, w, idx, rho, g, torch.zeros(r, n - 1), vs, steps, 0.1, gt.SIDE_ROWS)
    with pytest.raises(TypeError, match="v_state must be float32, got bfloat16"):
        ops.sparse_adamw_step(acfg, w, idx, rho, g, ms, vs.bfloat16(), steps, 0.1, gt.SIDE_ROWS)
    with pytest.raises(TypeError, match="row_steps must be int32"):
        ops.sparse_adamw_step(acfg, w, idx, rho, g, ms, vs, steps.long(), 0.1, gt.SIDE_ROWS)
    with pytest.raises(ValueError, match="new_idx must have shape"):
        ops.state_refresh("carry", None, idx[:3], ms, vs, steps)
    with pytest.raises(ValueError, match="grad must have 96 elements like w"):
        ops.adamw_step(acfg, w, torch.randn(m, n + 1), torch.zeros(m, n), torch.zeros(m, n),
                       torch.zeros(1, dtype=torch.int32), 0.1)
    assert torch.equal(w, w0) and steps.eq(0).all() and ms.eq(0).all()
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="rho is on cpu"):
            ops.sparse_grad(x.cuda(), dy.cuda(), idx.cuda(), rho, gt.SIDE_ROWS)
