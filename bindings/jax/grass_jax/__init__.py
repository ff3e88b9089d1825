"""grass for JAX: GRASS structured sparse gradient projection inside jitted training steps.

    grass_linear      a linear layer whose backward hands the optimizer the compressed
                      gradient g = PᵀG instead of the m x n weight gradient
    grass_adamw       the optimizer: row selection every K steps, compressed AdamW in place,
                      any optax transform for the parameters that are not projected
    ops               the libgrass ops as jax.ffi calls (CPU and CUDA)
    layers            Flax layers (import grass_jax.layers; needs flax): GrassDense,
                      GrassDenseGeneral (linen), GrassLinear (nnx)
"""

from . import ops
from ._lib import cuda_available, version
from .checkpoint import load_state, save_state
from .consistency import ProcessMismatchError
from .errors import GrassError
from .linear import LayerConfig, Projection, grass_linear
from .optimizer import DenseAdamWState, GrassLayerState, GrassState, grass_adamw

__all__ = [
    "DenseAdamWState", "GrassError", "GrassLayerState", "GrassState", "LayerConfig",
    "ProcessMismatchError", "Projection", "cuda_available", "grass_adamw", "grass_linear",
    "load_state", "ops", "save_state", "version",
]
__version__ = "0.8.0"
