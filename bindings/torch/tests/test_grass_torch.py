"""The torch adapter where torch is installed: CPU tensors always, CUDA tensors where a GPU
is present. References are float64 torch."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import grass_torch as gt  # noqa: E402

LIB = gt.Lib()
torch = pytest.importorskip("torch", reason="torch not installed: torch adapter tests skipped")


def devices():
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    else:
        print("no GPU: CUDA cases of the torch adapter skipped")
    return out


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_grass_layer_trains_and_matches_reference(device, dtype):
    torch.manual_seed(0)
    ops = gt.Torch(LIB)
    m, n, b, r = 64, 32, 48, 16
    x = torch.randn(b, n, device=device).to(dtype)
    dy = torch.randn(b, m, device=device).to(dtype)
    scores = ops.row_scores(x, dy, gt.SIDE_ROWS)
    ref = (dy.double().t() @ x.double()).norm(dim=1)
    torch.testing.assert_close(scores.double(), ref, rtol=1e-4, atol=1e-4)
    cfg = LIB.projection_config(rank=r, method="top_r", side=gt.SIDE_ROWS)
    idx, rho = ops.select(scores, cfg, 0)
    assert torch.equal(idx.cpu().long().sort().values, ref.topk(r).indices.cpu().sort().values)
    g = ops.sparse_grad(x, dy, idx, rho, gt.SIDE_ROWS)
    want = (dy.double().t() @ x.double())[idx.long()] * rho.double()[:, None]
    torch.testing.assert_close(g.double(), want, rtol=1e-4, atol=1e-3)
    w = torch.randn(m, n, device=device).to(dtype)
    layer = gt.GrassLayer(ops, w, rank=r, side=gt.SIDE_ROWS, refresh_every=5)
    w0 = w.clone()
    for _ in range(12):
        layer.step(w, x, dy, 1e-2)
    # 12 steps, refreshes at 0, 5, 10 reset the counts: 2 steps since the last one
    assert layer.refreshes == 3 and layer.row_steps.tolist() == [2] * r
    assert not torch.equal(w, w0)
