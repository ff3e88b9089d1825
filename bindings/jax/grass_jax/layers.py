"""Flax layers for grass: drop-ins for nn.Dense, nn.DenseGeneral and nnx.Linear.

Their kernels are stored (in, out), as Flax stores them, and every call reads them with
layout "in_out": declare the same to the optimizer (`grass_adamw(..., layout="in_out")`, or
`flax_options()`), and a mismatch fails at trace time naming the weight.

    GrassDense(features)            linen, nn.Dense's fields; kernel (in, features)
    GrassDenseGeneral(features)     linen, multi-axis features / trailing input axes, the
                                    kernel kept flattened to 2-D (prod(in), prod(features))
    GrassLinear(in, out, rngs=...)  nnx, nnx.Linear's arguments; kernel (in, out)
    merge(graphdef, params, projections)  nnx.merge that attaches each GrassLinear's projection

Two ways to train them:
  * any optax trainer, with grass_adamw as the optax transform (`tx.update` on ordinary
    gradients): the layers are plain dense layers, nothing else to do;
  * the compressed gradients (linen): pass the optimizer's projections as the "grass"
    collection, `model.apply({"params": params, "grass": opt.projections(params, state)}, x)`,
    differentiate with `opt.value_and_grad` and step with `opt.step`. Each layer finds its
    own projection in the collection (same path as its kernel) and routes its weight gradient
    into it; without the collection (init, evaluation) the layer is a plain product.

Flax is imported when this module is: `import grass_jax.layers` needs flax installed.
"""

from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import nnx

from .linear import Projection, grass_linear
from .optimizer import leaf_name

PROJECTIONS = "grass"   # the linen collection that carries the projections
LAYOUT = "in_out"

_default_kernel_init = nn.initializers.lecun_normal()


def is_grass_kernel(path, leaf) -> bool:
    """A grass_mask for Flax params: the leaves named "kernel" with 2 or more axes (every
    GrassDense / GrassLinear kernel, and plain nn.Dense kernels too, which the optax form
    trains just as well). Embeddings, biases and norm scales are left to the dense optimizer.
    A kernel with more than 2 axes is refused by grass_adamw unless declared a stack of
    layers (`stacked=`, for nn.scan): a multi-axis nn.DenseGeneral kernel is never projected
    silently as something else, nor silently left out (use GrassDenseGeneral)."""
    return leaf_name(path) == "kernel" and jnp.ndim(leaf) >= 2


def flax_options(**overrides):
    """The grass_adamw keywords for a Flax model: grass_mask=is_grass_kernel and
    layout="in_out" (override either): `grass_adamw(lr, rank=64, **flax_options())`."""
    return {"grass_mask": is_grass_kernel, "layout": LAYOUT, **overrides}


def _projection(module: nn.Module) -> Optional[Projection]:
    if not module.has_variable(PROJECTIONS, "kernel"):
        return None
    proj = module.get_variable(PROJECTIONS, "kernel")
    if proj is not None and not isinstance(proj, Projection):
        raise ValueError(f"{module.__class__.__name__} {'/'.join(module.scope.path)}: the "
                         f"'{PROJECTIONS}' collection must hold the Projection of its kernel "
                         f"(opt.projections(params, state)), got {type(proj).__name__}")
    return proj


def _dtype(dtype, *arrays):
    return jnp.dtype(dtype) if dtype is not None else jnp.result_type(*arrays)


class GrassDense(nn.Module):
    """nn.Dense with grass's linear product: y = x @ kernel + bias, kernel (in, features)."""

    features: int
    use_bias: bool = True
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = _default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, inputs):
        inputs = jnp.asarray(inputs)
        kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features),
                            self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) \
            if self.use_bias else None
        dtype = _dtype(self.dtype, inputs, kernel, *([bias] if bias is not None else []))
        y = grass_linear(inputs.astype(dtype), kernel, _projection(self), layout=LAYOUT)
        if bias is not None:
            y = y + bias.astype(dtype)
        return y


def _axes(axis, ndim, what):
    axis = (axis,) if isinstance(axis, int) else tuple(axis)
    axis = tuple(sorted(a % ndim for a in axis))
    if axis != tuple(range(ndim - len(axis), ndim)):
        raise ValueError(f"{what}: axis must be the trailing input axes (e.g. -1 or (-2, -1)), "
                         f"got {axis} for a {ndim}-D input; move the contracted axes last "
                         f"(jnp.moveaxis) first")
    return len(axis)


class GrassDenseGeneral(nn.Module):
    """nn.DenseGeneral for multi-axis features and trailing contracted axes, e.g. attention's
    q/k/v (features=(heads, head_dim)) and output (axis=(-2, -1)) projections. The kernel is
    kept flattened, (prod(contracted), prod(features)), so grass sees one 2-D weight; the
    layer reshapes inputs and outputs. (nn.DenseGeneral's `batch_dims` is not supported.)"""

    features: Union[int, Sequence[int]]
    axis: Union[int, Sequence[int]] = -1
    use_bias: bool = True
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = _default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, inputs):
        inputs = jnp.asarray(inputs)
        features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        n_axes = _axes(self.axis, inputs.ndim, "GrassDenseGeneral")
        batch, contracted = inputs.shape[:-n_axes], inputs.shape[inputs.ndim - n_axes:]
        n_in, n_out = int(np.prod(contracted)), int(np.prod(features))
        kernel = self.param("kernel", self.kernel_init, (n_in, n_out), self.param_dtype)
        bias = self.param("bias", self.bias_init, (n_out,), self.param_dtype) \
            if self.use_bias else None
        dtype = _dtype(self.dtype, inputs, kernel, *([bias] if bias is not None else []))
        x = inputs.reshape(batch + (n_in,)).astype(dtype)
        y = grass_linear(x, kernel, _projection(self), layout=LAYOUT)
        if bias is not None:
            y = y + bias.astype(dtype)
        return y.reshape(batch + features)


class GrassProjection(nnx.Variable):
    """The Projection of a GrassLinear's kernel for one compressed-gradient step, attached by
    `merge` (not an nnx.Param: nnx.state(model, nnx.Param) and nnx.Optimizer leave it out)."""


class GrassLinear(nnx.Module):
    """nnx.Linear with grass's linear product: y = x @ kernel + bias, kernel (in, out) an
    nnx.Param. With grass_adamw as the optax transform of nnx.Optimizer it trains like
    nnx.Linear (full gradients, grass's compressed state). For the compressed-gradient path
    the layer uses the Projection that `merge(graphdef, params, projections)` attached to it,
    or one passed by hand, `__call__(x, proj)`; with neither it is the plain product."""

    def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
                 dtype: Optional[Any] = None, param_dtype: Any = jnp.float32,
                 kernel_init: Callable = _default_kernel_init,
                 bias_init: Callable = nn.initializers.zeros_init(), rngs: nnx.Rngs):
        self.in_features, self.out_features = in_features, out_features
        self.use_bias, self.dtype = use_bias, dtype
        self.kernel = nnx.Param(kernel_init(rngs.params(), (in_features, out_features),
                                            param_dtype))
        self.bias = nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype)) \
            if use_bias else None

    def __call__(self, inputs, proj: Optional[Projection] = None):
        inputs = jnp.asarray(inputs)
        kernel = self.kernel[...]
        bias = self.bias[...] if self.bias is not None else None
        dtype = _dtype(self.dtype, inputs, kernel, *([bias] if bias is not None else []))
        if proj is None and isinstance(getattr(self, "grass_projection", None), GrassProjection):
            proj = self.grass_projection.get_value()
        y = grass_linear(inputs.astype(dtype), kernel, proj, layout=LAYOUT)
        if bias is not None:
            y = y + bias.astype(dtype)
        return y


def merge(graphdef, params, projections, *states):
    """`nnx.merge(graphdef, params, *states)` with each GrassLinear's kernel Projection taken
    from `projections` (opt.projections(params, state): params-shaped, params being the
    module's nnx.Param state as a plain dict, `nnx.as_pure(nnx.state(model, nnx.Param))`).
    Call it inside the loss given to opt.value_and_grad: every GrassLinear of the merged model
    routes its kernel's gradient into its projection, with nothing threaded through
    `__call__`. A GrassLinear whose kernel grass_mask leaves out gets None (plain product)."""
    model = nnx.merge(graphdef, params, *states)
    found = [(path, node) for path, node in nnx.iter_graph(model)
             if isinstance(node, GrassLinear)]
    for path, node in found:
        name = "/".join(map(str, path)) or "(the model)"
        sub = projections
        try:
            for key in path:
                sub = sub[key]
            proj = sub["kernel"] if sub is not None else None
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"grass_jax.layers.merge: GrassLinear {name} has no entry in the "
                             f"projections: pass opt.projections(params, state) for the params "
                             f"of this graphdef") from None
        if proj is not None and not isinstance(proj, Projection):
            raise ValueError(f"grass_jax.layers.merge: the projection of GrassLinear {name} "
                             f"must be a Projection (opt.projections(params, state)), got "
                             f"{type(proj).__name__}")
        if proj is not None:
            node.grass_projection = GrassProjection(proj)
    return model
