"""A LLaMA-style decoder for the trainer: pre-norm blocks of RMSNorm, causal multi-head
attention with rotary position embeddings, and a SwiGLU MLP; untied embedding and output
head; no biases.

Every attention and MLP weight is an (out, in) matrix applied through `linear`, which is
`grass_linear` when the weight has a GRASS projection and a plain matmul otherwise (no
projections: evaluation, or another optimizer). Embedding, head and norms are ordinary
parameters."""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from .linear import grass_linear

# The (out, in) weights of one block, in the order they are applied.
BLOCK_WEIGHTS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


class ModelConfig(NamedTuple):
    vocab: int = 256
    d_model: int = 128
    layers: int = 4
    heads: int = 4
    ffn: int = 352          # SwiGLU hidden width
    seq_len: int = 128
    rope_base: float = 10000.0
    norm_eps: float = 1e-5

    @property
    def head_dim(self):
        return self.d_model // self.heads

    def check(self):
        """Raises ValueError naming the first inconsistent size."""
        for name in ("vocab", "d_model", "layers", "heads", "ffn", "seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of heads {self.heads}")
        if self.head_dim % 2:
            raise ValueError(f"the head width d_model / heads = {self.head_dim} must be even "
                             f"for rotary embeddings")


def weight_shapes(cfg: ModelConfig):
    """{name: (out, in)} of one block's weights."""
    d, f = cfg.d_model, cfg.ffn
    return {"wq": (d, d), "wk": (d, d), "wv": (d, d), "wo": (d, d),
            "w_gate": (f, d), "w_up": (f, d), "w_down": (d, f)}


def init_params(cfg: ModelConfig, key):
    """Normal(0, 0.02) weights, the residual outputs (wo, w_down) scaled by 1/sqrt(2·layers);
    norms start at one."""
    keys = jax.random.split(key, cfg.layers + 2)
    out_scale = 1.0 / math.sqrt(2 * cfg.layers)
    blocks = []
    for i in range(cfg.layers):
        ks = jax.random.split(keys[i], len(BLOCK_WEIGHTS))
        block = {"attn_norm": jnp.ones((cfg.d_model,)), "mlp_norm": jnp.ones((cfg.d_model,))}
        for k, (name, shape) in zip(ks, weight_shapes(cfg).items()):
            std = 0.02 * (out_scale if name in ("wo", "w_down") else 1.0)
            block[name] = jax.random.normal(k, shape) * std
        blocks.append(block)
    return {
        "embed": jax.random.normal(keys[-2], (cfg.vocab, cfg.d_model)) * 0.02,
        "blocks": blocks,
        "norm": jnp.ones((cfg.d_model,)),
        "head": jax.random.normal(keys[-1], (cfg.vocab, cfg.d_model)) * 0.02,
    }


def is_projected(path, leaf=None) -> bool:
    """The GRASS mask: True for the attention and MLP weights (a params path from
    jax.tree_util), False for embedding, head and norms."""
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", None))
    return name in BLOCK_WEIGHTS


def projected_names(params):
    """[(dotted name, shape)] of the projected weights, in flattened order."""
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if is_projected(path):
            out.append((jax.tree_util.keystr(path, simple=True, separator="."), leaf.shape))
    return out


def rms_norm(x, w, eps):
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(
        x.dtype) * w


def rope_tables(cfg: ModelConfig, length):
    half = cfg.head_dim // 2
    freq = cfg.rope_base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = jnp.arange(length, dtype=jnp.float32)[:, None] * freq[None, :]
    return jnp.cos(angle), jnp.sin(angle)


def apply_rope(x, cos, sin):
    """x: (b, t, heads, head_dim); rotates the pairs (first half, second half)."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)


def linear(x, w, proj):
    return x @ w.T if proj is None else grass_linear(x, w, proj)


def forward(cfg: ModelConfig, params, proj, tokens):
    """Logits (b, t, vocab) for int tokens (b, t). `proj` is the params-shaped tree of
    projections from `grass_adamw.projections`, or None for plain matmuls."""
    b, t = tokens.shape
    x = params["embed"][tokens]
    cos, sin = rope_tables(cfg, t)
    mask = jnp.tril(jnp.ones((t, t), bool))
    for i, blk in enumerate(params["blocks"]):
        p = (lambda name: None) if proj is None else (lambda name, i=i: proj["blocks"][i][name])
        h = rms_norm(x, blk["attn_norm"], cfg.norm_eps)
        shape = (b, t, cfg.heads, cfg.head_dim)
        q = apply_rope(linear(h, blk["wq"], p("wq")).reshape(shape), cos, sin)
        k = apply_rope(linear(h, blk["wk"], p("wk")).reshape(shape), cos, sin)
        v = linear(h, blk["wv"], p("wv")).reshape(shape)
        att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(cfg.head_dim)
        att = jnp.where(mask[None, None], att.astype(jnp.float32), -jnp.inf)
        att = jax.nn.softmax(att, axis=-1).astype(v.dtype)
        o = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, cfg.d_model)
        x = x + linear(o, blk["wo"], p("wo"))
        h = rms_norm(x, blk["mlp_norm"], cfg.norm_eps)
        g = jax.nn.silu(linear(h, blk["w_gate"], p("w_gate"))) * linear(h, blk["w_up"],
                                                                          p("w_up"))
        x = x + linear(g, blk["w_down"], p("w_down"))
    x = rms_norm(x, params["norm"], cfg.norm_eps)
    return x @ params["head"].T


def loss_fn(cfg: ModelConfig, params, proj, windows):
    """Mean next-byte cross entropy (nats) over (b, t + 1) int windows."""
    logits = forward(cfg, params, proj, windows[:, :-1])
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), windows[:, 1:]))
