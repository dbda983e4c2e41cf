"""Flax modules: backbone, pixel decoder, transformer decoder (the segmenter) and the trackers."""
