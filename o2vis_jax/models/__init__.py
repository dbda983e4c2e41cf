"""Flax modules: backbone, pixel decoder, transformer decoder (the segmenter) and the trackers."""

from o2vis_jax.models.segmenter import Segmenter, build_segmenter

__all__ = ["Segmenter", "build_segmenter"]
