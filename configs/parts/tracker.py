"""`config.tracker`: T_E / T_A, the IOM and the matching (SPEC sections 2-3, REFERENCE.md).

`semantics` picks defaults for the single switches below that are left at None
(`o2vis_jax.video_model.resolve_options` does the resolution, REFERENCE.md section 13):

| switch            | 'reference' (default)         | 'paper'                                    |
|-------------------|-------------------------------|--------------------------------------------|
| anchor            | adaptive  (s*M + (1-s)*m)     | adaptive_paper (s*m + (1-s)*M), Eq. 7      |
| current_features  | tracker (T_A self mode on u_t)| segmenter (e_t for OHM, u_t for the anchor)|
| early_matching    | False (True for mode te_only) | True (training only, Eq. 9)                |

`mode='te_only'` is the T_E-only model of Table 3(a) row 6 (o2vis_jax/te_only.py; the reference builds its
T_E with 6 layers: set num_layers=6, as configs/ablations_r50.py:te_only does).
"""

import ml_collections


def get() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      num_layers=3,               # blocks in T_E and in T_A each (in T_E for mode te_only).
      ffn_dim=2048,
      num_heads=8,
      semantics="reference",      # reference | paper (REFERENCE.md section 13).
      matcher="host",             # host (scipy via pure_callback) | device (pure JAX, exact).
      mode="trackers",            # trackers (O2VIS) | baseline (training-free, segmenter only) | te_only.
      # Single switches; None = the value `semantics` implies (table above).
      anchor=ml_collections.FieldReference(None, field_type=str),
      # adaptive | adaptive_paper | current | memory (Table 3(b)).
      current_features=ml_collections.FieldReference(None, field_type=str),  # tracker | segmenter.
      early_matching=ml_collections.FieldReference(None, field_type=bool),
      dtype=ml_collections.FieldReference(None, field_type=str),  # None = follow the inputs.
      param_dtype="float32",
      # Training-free baselines of Table 3(a) rows 1-5 (REFERENCE.md section 11), mode='baseline'.
      baseline=ml_collections.ConfigDict(dict(
          memory="iom",           # none | similarity | momentum | iom.
          matching="ohm",         # hungarian | ohm.
          top_k=10,               # MinVIS.inference_video keeps 10 (not inference.max_num).
      )),
  ))


def tiny(config: ml_collections.ConfigDict) -> None:
  config.tracker.ffn_dim = 64
  config.tracker.num_heads = 4
