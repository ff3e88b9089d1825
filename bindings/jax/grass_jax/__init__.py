"""grass for JAX: GRASS structured sparse gradient projection inside jitted training steps.

    grass_linear      a linear layer whose backward hands the optimizer the compressed
                      gradient g = PᵀG instead of the m x n weight gradient
    grass_adamw       the optimizer: row selection every K steps, compressed AdamW in place,
                      any optax transform for the parameters that are not projected
    ops               the libgrass ops as jax.ffi calls (CPU and CUDA)
"""

from . import ops
from ._lib import cuda_available, version
from .errors import GrassError

__all__ = ["GrassError", "cuda_available", "ops", "version"]
__version__ = "0.1.0"
