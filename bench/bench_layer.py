"""GPU benchmark of one linear layer: grass's sparse gradient, optimizer step, both, and a
refresh (row scores + selection), against the floor and, in the same process on the same card
and data, the peers of bench/peers.py (full-rank cuBLAS dW + fused AdamW, GaLore with a torch
SVD, GRASS in eager PyTorch). Also peak memory of one 13824 x 5120 layer per method.

Usage (GPU machine, with torch): python3 bench/bench_layer.py
(libgrass.so from $GRASS_LIB or target/release). Writes $OUT/bench.json and $OUT/bench.md when
OUT is set; the results go into BENCHMARKS.md with the date, card and command.
"""
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "bindings", "torch")]
import grass_torch as gt  # noqa: E402
import peers  # noqa: E402

B = 8192
K = 200
SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (13824, 5120)]
RANKS = (256, 1024)


def timeit(fn, warm=5, n=50):
    """peers.timeit (median of CUDA-event times), with grass's own sample count."""
    return peers.timeit(fn, warm, n)


def floors(m, n, b, r, bw, fl):
    """Floors in ms of (grad, step, both), side = rows (every reference configuration of docs/api.md)."""
    grad_bytes = b * n * 2 + b * r * 2 + r * n * 4
    step_bytes = r * n * 4 + r * n * 4 * 4 + r * n * 2 * 2
    both_bytes = b * n * 2 + b * r * 2 + r * n * 4 * 4 + r * n * 2 * 2
    flops = 2 * r * b * n
    f = lambda by, fo: max(by / bw, fo / fl) * 1e3  # noqa: E731
    return f(grad_bytes, flops), f(step_bytes, 0), f(both_bytes, flops)


def gather_sector_bytes(idx, b, elem=2, sector=32):
    """Bytes the gather of dY's selected columns moves from memory: whole 32-byte sectors, one
    per distinct sector the selected columns of a row fall in (the floor counts b*r*elem)."""
    per = sector // elem
    return b * sector * len(set(i // per for i in idx.tolist()))


def kernel_breakdown(fn, reps=20):
    """Device time per kernel (us per call of fn) from the profiler: the launches of one GRASS
    step by name, cuBLAS's GEMM included."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None)
        if t is None:
            t = getattr(e, "cuda_time_total", 0.0)
        if t > 0 and e.count >= reps:
            out[e.key] = round(t / reps, 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def bench_grass(ops, m, n, b, r):
    torch.manual_seed(0)
    x = torch.randn(b, n, dtype=torch.bfloat16, device="cuda")
    dy = torch.randn(b, m, dtype=torch.bfloat16, device="cuda") * 0.01
    w = torch.randn(m, n, dtype=torch.bfloat16, device="cuda") * 0.02
    side = gt.SIDE_ROWS
    layer = gt.GrassLayer(ops, w, rank=r, side=side, refresh_every=K)
    layer.refresh(x, dy)
    g = layer.g
    out = {}
    out["grass_grad_ms"] = timeit(lambda: ops.sparse_grad(x, dy, layer.idx, layer.rho, side, out=g))
    out["grass_step_ms"] = timeit(lambda: ops.sparse_adamw_step(layer.acfg, w, layer.idx, layer.rho, g, layer.m_state,
                                                                layer.v_state, layer.row_steps, 1e-3, side,
                                                                skipped=layer.skipped))

    def both():
        ops.sparse_grad(x, dy, layer.idx, layer.rho, side, out=g)
        ops.sparse_adamw_step(layer.acfg, w, layer.idx, layer.rho, g, layer.m_state, layer.v_state,
                              layer.row_steps, 1e-3, side, skipped=layer.skipped)
    out["grass_both_ms"] = timeit(both)
    out["dy_gather_sector_bytes"] = gather_sector_bytes(layer.idx, b)
    try:
        out["kernels_us"] = kernel_breakdown(both)
    except Exception as e:  # the breakdown explains; it must not cost the measurements
        print(f"kernel breakdown unavailable: {e!r}", flush=True)

    def refresh():
        s = ops.row_scores(x, dy, side)
        ops.select(s, layer.pcfg, 0)
    out["grass_refresh_ms"] = timeit(refresh, 2, 10)
    # the state remap of a refresh with carry (in place), between two selections
    other, _ = ops.select(ops.row_scores(x, dy * 1.5 + 0.01, side), layer.pcfg, 1)
    sel = [layer.idx, other]
    flip = [0]

    def remap():
        old, new = sel[flip[0]], sel[1 - flip[0]]
        ops.state_refresh("carry", old, new, layer.m_state, layer.v_state, layer.row_steps)
        flip[0] = 1 - flip[0]
    out["grass_carry_ms"] = timeit(remap, 2, 20)
    out["scores_workspace_bytes"] = ops.lib.size_query("grass_scores_workspace_size", ops.lib.context(0), m, n, b,
                                                       side, 1)
    # graph capture of one full step: proves no host sync or allocation inside
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        both()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        both()
    out["grass_both_graph_ms"] = timeit(graph.replay)
    return out


def peak_memory(fn):
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def memory_13824(ops, r=256):
    m, n, b = 13824, 5120, B

    def grass():
        x = torch.randn(b, n, dtype=torch.bfloat16, device="cuda")
        dy = torch.randn(b, m, dtype=torch.bfloat16, device="cuda")
        w = torch.randn(m, n, dtype=torch.bfloat16, device="cuda")
        layer = gt.GrassLayer(ops, w, rank=r, side=gt.SIDE_ROWS, refresh_every=K)
        for _ in range(3):
            layer.step(w, x, dy, 1e-3)

    def adamw():
        x = torch.randn(b, n, dtype=torch.bfloat16, device="cuda")
        dy = torch.randn(b, m, dtype=torch.bfloat16, device="cuda")
        w = torch.nn.Parameter(torch.randn(m, n, dtype=torch.bfloat16, device="cuda"))
        opt = torch.optim.AdamW([w], lr=1e-3, fused=True)
        for _ in range(3):
            w.grad = dy.t() @ x
            opt.step()

    def galore():
        x = torch.randn(b, n, dtype=torch.bfloat16, device="cuda")
        dy = torch.randn(b, m, dtype=torch.bfloat16, device="cuda")
        w = torch.randn(m, n, dtype=torch.bfloat16, device="cuda")
        opt = peers.GaLoreAdamW(w, r, refresh_every=K)
        for _ in range(3):
            opt.step(dy.t() @ x)

    ops._ws.clear()
    return {"grass_peak_mib": peak_memory(grass), "adamw_peak_mib": peak_memory(adamw),
            "galore_peak_mib": peak_memory(galore)}


def main():
    bw, fl = peers.ceilings()
    card = torch.cuda.get_device_name()
    print(f"{card}: copy {bw / 1e12:.2f} TB/s, bf16 GEMM {fl / 1e12:.0f} TFLOP/s", flush=True)
    ops = gt.Torch()
    rows = []
    for (m, n) in SHAPES:
        for r in RANKS:
            row = {"m": m, "n": n, "b": B, "r": r}
            row.update(bench_grass(ops, m, n, B, r))
            row.update(peers.bench(m, n, B, r, K, bw, fl))
            fg, fs, fb = floors(m, n, B, r, bw, fl)
            row.update({"floor_grad_ms": fg, "floor_step_ms": fs, "floor_both_ms": fb})
            # the same floor with the gather's dY traffic counted in whole sectors
            sector_bytes = (B * n * 2 + row["dy_gather_sector_bytes"] + r * n * 4 * 4 + r * n * 2 * 2)
            row["floor_both_sectors_ms"] = max(sector_bytes / bw, 2 * r * B * n / fl) * 1e3
            row["grass_ms"] = row["grass_both_ms"] + row["grass_refresh_ms"] / K
            rows.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    mem = memory_13824(ops)
    lines = [f"card: {card}; copy {bw / 1e12:.2f} TB/s, bf16 GEMM {fl / 1e12:.0f} TFLOP/s; b = {B}, K = {K}, bf16, "
             "side = rows",
             "",
             "| m x n | r | grad ms (x floor) | step ms (x floor) | grad+step ms (x floor) | graph replay ms "
             "| refresh ms (x dense dW) | carry remap ms | grass amortized ms | full dW+AdamW ms (ratio) "
             "| GaLore ms (ratio) | eager GRASS ms (ratio) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for o in rows:
        g = o["grass_ms"]
        lines.append(
            f"| {o['m']} x {o['n']} | {o['r']} | {o['grass_grad_ms']:.3f} ({o['grass_grad_ms'] / o['floor_grad_ms']:.2f}) "
            f"| {o['grass_step_ms']:.3f} ({o['grass_step_ms'] / o['floor_step_ms']:.2f}) "
            f"| {o['grass_both_ms']:.3f} ({o['grass_both_ms'] / o['floor_both_ms']:.2f}) "
            f"| {o['grass_both_graph_ms']:.3f} "
            f"| {o['grass_refresh_ms']:.3f} ({o['grass_refresh_ms'] / o['full_grad_ms']:.2f}) "
            f"| {o['grass_carry_ms']:.3f} | {g:.3f} "
            f"| {o['full_ms']:.3f} ({o['full_ms'] / g:.1f}x) | {o['galore_ms']:.3f} ({o['galore_ms'] / g:.1f}x) "
            f"| {o['grass_t_ms']:.3f} ({o['grass_t_ms'] / g:.1f}x) |")
    lines += ["", "grad+step against the floor with dY's gather counted in whole 32-byte sectors, and the "
              "device time of each kernel of one step (us, from the profiler):", ""]
    for o in rows:
        ks = ", ".join(f"{k[:40]} {v}" for k, v in list(o.get("kernels_us", {}).items())[:8])
        lines.append(f"- {o['m']} x {o['n']}, r = {o['r']}: dY sectors {o['dy_gather_sector_bytes'] / 2**20:.1f} MiB, "
                     f"x sector floor {o['grass_both_ms'] / o['floor_both_sectors_ms']:.2f}; {ks}")
    lines += ["", f"peak memory of one 13824 x 5120 layer (r = 256, 3 steps, MiB above the start): "
              f"GRASS {mem['grass_peak_mib']:.0f}, AdamW {mem['adamw_peak_mib']:.0f}, GaLore {mem['galore_peak_mib']:.0f}"]
    table = "\n".join(lines)
    print(table)
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "bench.json"), "w") as f:
            json.dump({"card": card, "bw": bw, "flops": fl, "rows": rows, "memory": mem}, f, indent=1)
        with open(os.path.join(os.environ["OUT"], "bench.md"), "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
