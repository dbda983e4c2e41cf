"""Command lines over `o2vis_jax.datasets`: `python -m data.synthetic` and `python -m data.build`.

Nothing in `o2vis_jax` imports this package (it is not installed with the library); the logic lives in
`o2vis_jax.datasets`.
"""
