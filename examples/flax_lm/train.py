"""A small byte-level Flax language model trained with grass or optax.adamw, written the way a
Flax user writes one: linen modules, DenseGeneral attention, one jitted train step on a
TrainState, an optax chain with gradient clipping and a warm-up cosine schedule, and an orbax
checkpoint. Switching the optimizer changes two things: the layer classes (grass's drop-ins,
whose kernels grass can project) and `tx`.

    python examples/flax_lm/train.py --optimizer grass --steps 300
    python examples/flax_lm/train.py --optimizer adamw --steps 300
    python examples/flax_lm/train.py --optimizer grass --compressed   # grass's layer path

The text is the Python standard library's sources (grass_jax.data), so nothing is downloaded.
"""

import argparse
import json
import math
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import linen as nn
from flax.training import train_state

import grass_jax as gj
from grass_jax import data
from grass_jax import layers as gl


class Block(nn.Module):
    heads: int
    head_dim: int
    grass: bool

    @nn.compact
    def __call__(self, x):
        dense = gl.GrassDense if self.grass else nn.Dense
        dense_general = gl.GrassDenseGeneral if self.grass else nn.DenseGeneral
        d = x.shape[-1]
        h = nn.LayerNorm()(x)
        q, k, v = (dense_general((self.heads, self.head_dim), name=n)(h) for n in "qkv")
        mask = nn.make_causal_mask(jnp.ones(x.shape[:2]))
        a = nn.dot_product_attention(q, k, v, mask=mask)
        x = x + dense_general(d, axis=(-2, -1), name="out")(a)
        h = nn.LayerNorm()(x)
        return x + dense(d, name="down")(nn.gelu(dense(4 * d, name="up")(h)))


class LM(nn.Module):
    vocab: int = data.VOCAB
    d_model: int = 128
    layers: int = 2
    heads: int = 4
    grass: bool = False

    @nn.compact
    def __call__(self, ids):
        x = nn.Embed(self.vocab, self.d_model)(ids)
        for i in range(self.layers):
            x = Block(self.heads, self.d_model // self.heads, self.grass, name=f"block{i}")(x)
        return nn.Dense(self.vocab, name="head")(nn.LayerNorm()(x))


def in_blocks(path, leaf):
    """grass projects the blocks' kernels; embedding, head and norms stay with AdamW."""
    return gl.is_grass_kernel(path, leaf) and "block" in jax.tree_util.keystr(path)


def make_tx(args, schedule):
    if args.optimizer == "adamw":
        return optax.chain(optax.clip_by_global_norm(args.clip), optax.adamw(schedule))
    grass = gj.grass_adamw(schedule, rank=args.rank, refresh_every=args.refresh_every,
                           **gl.flax_options(grass_mask=in_blocks),
                           dense=lambda lr: optax.adamw(lr),
                           max_grad_norm=args.clip if args.compressed else None)
    if args.compressed:
        return grass          # opt.step: clipping is grass's own max_grad_norm
    return optax.chain(optax.clip_by_global_norm(args.clip), grass)


def cross_entropy(logits, targets):
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


@jax.jit
def train_step(state, batch):
    """The ordinary Flax step: grads of the params, apply_gradients (grass as optax)."""
    def loss_fn(params):
        return cross_entropy(state.apply_fn({"params": params}, batch[:, :-1]), batch[:, 1:])

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


@partial(jax.jit, static_argnums=2)
def compressed_step(state, batch, opt):
    """grass's layer path: the layers find their projections in the "grass" collection and
    hand grass the compressed gradients; opt.step writes the selected rows in place."""
    def loss_fn(params, proj):
        logits = state.apply_fn({"params": params, gl.PROJECTIONS: proj}, batch[:, :-1])
        return cross_entropy(logits, batch[:, 1:])

    opt_state = state.opt_state
    proj = opt.projections(state.params, opt_state)
    loss, grads = opt.value_and_grad(loss_fn)(state.params, proj)
    params, opt_state = opt.step(state.params, grads, opt_state)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), loss


@partial(jax.jit, static_argnums=0)
def eval_loss(model, params, batches):
    return jnp.mean(jnp.stack([cross_entropy(model.apply({"params": params}, b[:, :-1]),
                                             b[:, 1:]) for b in batches]))


def state_bytes(tree):
    return int(sum(x.nbytes for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "nbytes")))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optimizer", choices=["grass", "adamw"], default="grass")
    p.add_argument("--compressed", action="store_true",
                   help="grass through its layer path (opt.step) instead of optax")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default: 2e-3 for adamw, 4e-2 for grass)")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--refresh-every", type=int, default=200)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--stop-at", type=int, default=None,
                   help="stop (and checkpoint) at this step, as an interrupted run would")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="save the TrainState here at the end (orbax), and restore from it "
                        "first when it exists")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    lr = args.lr or (4e-2 if args.optimizer == "grass" else 2e-3)

    corpus = data.load_corpus()
    model = LM(d_model=args.d_model, layers=args.layers, grass=args.optimizer == "grass")
    first = jnp.asarray(data.train_batch(corpus, args.seed, 0, args.batch, args.seq_len))
    params = model.init(jax.random.PRNGKey(args.seed), first[:, :-1])["params"]
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, max(1, args.steps // 10),
                                                  args.steps, lr * 0.1)
    tx = make_tx(args, schedule)
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    ckpt = ocp.StandardCheckpointer()
    if args.checkpoint is not None and args.checkpoint.exists():
        state = ckpt.restore(args.checkpoint.resolve(), jax.eval_shape(lambda: state))
        print(f"restored step {int(state.step)} from {args.checkpoint}")

    valid = jnp.asarray(data.valid_batches(corpus, 4, args.batch, args.seq_len))
    start, losses, t0 = int(state.step), [], time.perf_counter()
    for step in range(start, args.steps if args.stop_at is None else args.stop_at):
        batch = jnp.asarray(data.train_batch(corpus, args.seed, step, args.batch, args.seq_len))
        if args.compressed:
            state, loss = compressed_step(state, batch, tx)
        else:
            state, loss = train_step(state, batch)
        losses.append(float(loss))
        if step % max(1, args.steps // 10) == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {losses[-1]:.4f}", flush=True)
    seconds = time.perf_counter() - t0
    val = float(eval_loss(model, state.params, valid))
    result = dict(optimizer=args.optimizer + ("-compressed" if args.compressed else ""),
                  lr=lr, steps=args.steps, val_loss=round(val, 4),
                  bits_per_byte=round(val / math.log(2), 4),
                  train_loss_first=round(losses[0], 4) if losses else None,
                  train_loss_last=round(losses[-1], 4) if losses else None,
                  train_loss_last10=round(float(np.mean(losses[-10:])), 4) if losses else None,
                  optimizer_state_bytes=state_bytes(state.opt_state),
                  param_bytes=state_bytes(state.params),
                  seconds=round(seconds, 1))
    print(json.dumps(result))
    if args.checkpoint is not None:
        ckpt.save(args.checkpoint.resolve(), state, force=True)
        ckpt.wait_until_finished()
    if args.json is not None:
        args.json.write_text(json.dumps(result) + "\n")
    return result, state


if __name__ == "__main__":
    main()
