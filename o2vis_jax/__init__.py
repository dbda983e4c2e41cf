"""o2vis-jax: a JAX/Flax reimplementation of O2VIS online video instance segmentation."""

__version__ = "0.1.0"
