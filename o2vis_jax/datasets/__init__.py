"""Datasets: the TFDS builders of the real datasets (`builders`) and the synthetic occlusion dataset
(`synthetic`).

They live in the library, not in the top-level `data/` command lines, so that the input pipeline and the
scripts import them without depending on a package that is not installed; `data/` only parses flags.
Nothing is imported here, so `import o2vis_jax.datasets.synthetic` does not pay for TFDS.
"""
