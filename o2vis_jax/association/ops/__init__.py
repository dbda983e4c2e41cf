"""Operations shared by the association methods, each equation in exactly one place.

- `hungarian.py`: minimum-cost assignment on the host (scipy through `jax.pure_callback`) and on the
  device (exact, pure JAX); the cosine cost; the occupancy-guided Hungarian matching (OHM, Eq. 6).
- `memory.py`: the Instance Occupancy Memory update (Eq. 3), occupancy (Eq. 4), the adaptive anchor
  (Eq. 7), and the memories of the training-free baselines.
Import the modules (`from o2vis_jax.association.ops import hungarian`); the public names are re-exported
by `o2vis_jax.association`.
"""
