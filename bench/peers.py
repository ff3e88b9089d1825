"""The methods grass is measured against, for one linear layer's weight gradient and optimizer
step in bf16 on one CUDA device, written with plain PyTorch ops so that the benchmark needs
nothing beyond torch:

  full     the m x n weight gradient dY^T X (one cuBLAS GEMM) and torch's fused AdamW on W
  galore   the same gradient, projected to rank r by singular vectors of a gradient (a torch
           SVD, redone every K steps), Adam on the r-dimensional states, the update projected
           back and added with scale alpha (GaLore, arXiv 2403.03507)
  grass_t  GRASS in eager PyTorch: r columns of dY gathered and scaled, the r x n compressed
           gradient from one GEMM, Adam on r x n f32 states, the update added into r rows of W

`ceilings()` measures the card's copy bandwidth and bf16 GEMM rate, from which the benchmark
forms its floors; `bench()` times the three methods on the same random data. GaLore's SVD is
timed by `SvdSamples`, within a time budget (one SVD of a large gradient takes seconds).
"""
import statistics
import time

import torch


def timeit(fn, warm=5, n=30):
    """Median time of fn in ms over n calls after warm calls, from CUDA events."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(n):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def ceilings():
    """(bytes/s, flop/s): a 1 GiB device-to-device copy (read + write) and an 8192^3 bf16 GEMM."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    copy_ms = timeit(lambda: dst.copy_(src), 3, 10)
    bandwidth = 2 * src.numel() / (copy_ms * 1e-3)
    del src, dst
    side = 8192
    a = torch.randn(side, side, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(side, side, dtype=torch.bfloat16, device="cuda")
    gemm_ms = timeit(lambda: a @ b, 3, 10)
    rate = 2 * side**3 / (gemm_ms * 1e-3)
    del a, b
    torch.cuda.empty_cache()
    return bandwidth, rate


class GaLoreAdamW:
    """GaLore's projected Adam for one m x n weight: the gradient goes to the rank-r subspace
    of its shorter side (left singular vectors when m <= n, right ones otherwise), refreshed
    from the current gradient every `refresh_every` steps; Adam runs on the projected r x n (or
    m x r) f32 states; the normalized update goes back through the projector, scaled by alpha,
    with decoupled weight decay on the whole weight."""

    def __init__(self, w, rank, refresh_every, lr=1e-3, alpha=0.25, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0):
        self.w, self.rank, self.refresh_every = w, rank, refresh_every
        self.lr, self.alpha, self.betas, self.eps, self.weight_decay = lr, alpha, betas, eps, weight_decay
        m, n = w.shape
        self.left = m <= n
        shape = (rank, n) if self.left else (m, rank)
        self.m_state = torch.zeros(shape, dtype=torch.float32, device=w.device)
        self.v_state = torch.zeros(shape, dtype=torch.float32, device=w.device)
        self.projector = None
        self.steps = 0

    def refresh(self, grad):
        u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
        self.projector = u[:, : self.rank].contiguous() if self.left else vh[: self.rank].t().contiguous()

    @torch.no_grad()
    def step(self, grad):
        # the first step's projector, unless one was set before it; then every K steps
        if self.projector is None or (self.steps > 0 and self.steps % self.refresh_every == 0):
            self.refresh(grad)
        self.steps += 1
        g = grad.float()
        low = self.projector.t() @ g if self.left else g @ self.projector
        b1, b2 = self.betas
        self.m_state.mul_(b1).add_(low, alpha=1 - b1)
        self.v_state.mul_(b2).addcmul_(low, low, value=1 - b2)
        m_hat = self.m_state / (1 - b1**self.steps)
        v_hat = self.v_state / (1 - b2**self.steps)
        update = m_hat / (v_hat.sqrt() + self.eps)
        full = self.projector @ update if self.left else update @ self.projector.t()
        if self.weight_decay:
            self.w.mul_(1 - self.lr * self.weight_decay)
        self.w.add_(full.to(self.w.dtype), alpha=-self.lr * self.alpha)


class SvdSamples:
    """Times of GaLore's SVD, per gradient shape: an SVD of an m x n gradient costs the same at
    every rank, so the ranks of a shape share its samples (and its factors, for their
    projectors). The first projector of a shape is always timed (a projector is needed); more
    samples, up to `most` per shape, only while the SVD time spent stays under `budget_s` and
    `deadline` (time.monotonic()) is not near. `note()` says how many were taken."""

    def __init__(self, most=4, budget_s=30.0, deadline=None):
        self.most, self.budget_s, self.deadline = most, budget_s, deadline
        self.samples = {}
        self.spent_s = 0.0
        self.factors = None  # (shape, u, vh) of the last shape

    def _svd(self, grad):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
        stop.record()
        torch.cuda.synchronize()
        ms = start.elapsed_time(stop)
        self.spent_s += ms / 1e3
        self.samples.setdefault(tuple(grad.shape), []).append(ms)
        return u, vh

    def projector(self, galore, grad):
        """Sets galore's projector from the shape's factors, computing (and timing) them once."""
        shape = tuple(grad.shape)
        if self.factors is None or self.factors[0] != shape:
            self.factors = None  # frees the last shape's factors first
            torch.cuda.empty_cache()
            self.factors = (shape, *self._svd(grad))
        _, u, vh = self.factors
        galore.projector = u[:, : galore.rank].contiguous() if galore.left else vh[: galore.rank].t().contiguous()

    def more(self, grad):
        """Further timed SVDs of grad's shape, while the bounds allow."""
        shape = tuple(grad.shape)
        while len(self.samples.get(shape, [])) < self.most and self.spent_s < self.budget_s:
            last = max(self.samples.get(shape, [0.0])) / 1e3
            if self.deadline is not None and time.monotonic() + 2 * last > self.deadline:
                break
            self._svd(grad)

    def ms(self, shape):
        return statistics.median(self.samples[tuple(shape)])

    def count(self, shape):
        return len(self.samples.get(tuple(shape), []))

    def clear(self):
        self.factors = None
        torch.cuda.empty_cache()


def bench(m, n, b, r, K, bandwidth, rate, svd=None):
    """ms per step of each peer on an m x n bf16 layer with b tokens, rank r, refresh every K
    steps (a refresh's cost is spread over its K steps). `svd` (SvdSamples) times GaLore's SVD;
    without one it is timed 4 times here."""
    torch.manual_seed(0)
    x = torch.randn(b, n, dtype=torch.bfloat16, device="cuda")
    dy = torch.randn(b, m, dtype=torch.bfloat16, device="cuda") * 0.01
    out = {}

    # full rank: the m x n gradient, then fused AdamW
    w = torch.nn.Parameter(torch.randn(m, n, dtype=torch.bfloat16, device="cuda") * 0.02)
    adamw = torch.optim.AdamW([w], lr=1e-3, fused=True)

    def full():
        w.grad = dy.t() @ x
        adamw.step()
    out["full_ms"] = timeit(full)
    out["full_grad_ms"] = timeit(lambda: dy.t() @ x)
    del adamw, w
    torch.cuda.empty_cache()

    # GaLore: the m x n gradient, a projected Adam step; the SVD timed apart and amortized
    w = torch.randn(m, n, dtype=torch.bfloat16, device="cuda") * 0.02
    galore = GaLoreAdamW(w, r, refresh_every=10**9)
    grad = dy.t() @ x
    svd = svd if svd is not None else SvdSamples(most=4, budget_s=float("inf"))
    svd.projector(galore, grad)  # the projector once (its SVD timed: one sample)
    out["galore_step_ms"] = timeit(lambda: galore.step(dy.t() @ x))
    svd.more(grad)
    out["galore_svd_ms"] = svd.ms(grad.shape)
    out["galore_svd_samples"] = svd.count(grad.shape)
    out["galore_ms"] = out["galore_step_ms"] + out["galore_svd_ms"] / K
    del galore, w, grad
    torch.cuda.empty_cache()

    # GRASS in eager PyTorch: rows drawn without replacement with probability ~ squared norm
    w = torch.randn(m, n, dtype=torch.bfloat16, device="cuda") * 0.02

    def select():
        norms = (dy.t() @ x).float().square().sum(dim=1)
        q = norms / norms.sum()
        idx = torch.multinomial(q, r, replacement=False).sort().values
        scale = (r * q[idx]).clamp_min(1e-30).rsqrt()
        return idx, scale
    idx, scale = select()
    out["grass_select_ms"] = timeit(select, 2, 5)
    m_state = torch.zeros(r, n, device="cuda")
    v_state = torch.zeros(r, n, device="cuda")
    count = [0]
    b1, b2, eps, lr, alpha = 0.9, 0.999, 1e-8, 1e-3, 1.0

    def compressed():
        return ((dy.index_select(1, idx) * scale.to(dy.dtype)).t() @ x).float()

    def grass_step():
        count[0] += 1
        g = compressed()
        m_state.mul_(b1).add_(g, alpha=1 - b1)
        v_state.mul_(b2).addcmul_(g, g, value=1 - b2)
        update = (m_state / (1 - b1 ** count[0])) / ((v_state / (1 - b2 ** count[0])).sqrt() + eps)
        w.index_add_(0, idx, (update * scale[:, None] * (-lr * alpha)).to(w.dtype))
    out["grass_t_step_ms"] = timeit(grass_step)
    out["grass_t_ms"] = out["grass_t_step_ms"] + out["grass_select_ms"] / K
    out["grass_t_grad_ms"] = timeit(compressed)

    # the full-rank step's own floor: read X, dY, write and read G (bf16), read+write W (bf16)
    # and M, V (f32); the m x b x n GEMM
    full_bytes = b * n * 2 + b * m * 2 + m * n * 2 * 2 + m * n * 2 * 2 + m * n * 4 * 4
    out["full_floor_ms"] = max(full_bytes / bandwidth, 2 * m * b * n / rate) * 1e3
    del w, m_state, v_state, x, dy
    torch.cuda.empty_cache()
    return out
