"""Flax modules: backbone, pixel decoder, transformer decoder (the segmenter) and the trackers."""

from o2vis_jax.models.backbones import build_backbone
from o2vis_jax.models.segmenter import (Segmenter, build_segmenter, init_segmenter_params, segmenter_apply,
                                        segmenter_trace_count)

__all__ = ["Segmenter", "build_backbone", "build_segmenter", "init_segmenter_params", "segmenter_apply",
           "segmenter_trace_count"]
