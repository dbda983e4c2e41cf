"""Flax modules: backbone, pixel decoder, transformer decoder (the segmenter) and the trackers."""

from o2vis_jax.models.segmenter import Segmenter, build_segmenter, init_segmenter_params

__all__ = ["Segmenter", "build_segmenter", "init_segmenter_params"]
