"""DVIS-DAQ's config section, `config.association.dvis_daq` (reference/dvis_daq.md; the authors' configs
`configs/*/DAQ_*.yaml` and `dvis_daq/config.py`).

Thresholds: YTVIS 0.01, OVIS 0.1 (`inference_select_threshold`), with `ovis_infer` (the slot branch gates
the tracks' validity) only in the OVIS configs. `kick_out_frame_num` (8) and `noise_frame_num` (5) are the
constructor default and the DAQ configs' value.

`num_slots` (S): the sequence table. Within one `track` call a slot holds one sequence for good, so S must
cover the sequences a clip (or, in streaming inference, a chunk plus the sequences still live) creates;
`on_overflow` says what happens when it does not: 'error' (scoring raises, naming the field) or 'drop'
(the sequences that find no free slot are not created, counted in the output `num_dropped`).
"""

import dataclasses

import ml_collections

from o2vis_jax import config_validation
from o2vis_jax.association.ops import hungarian as hungarian_lib

SECTION = "association.dvis_daq"
OVERFLOW = ("error", "drop")
# The fused position keeps at most this many previous positions (VideoInstanceSequence.update_pos with
# maximum_chache = 10: pos_embeds[L - 10 : L - 1]).
POSITION_HISTORY = 9


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      num_slots=100,                       # S, the sequence table (module docstring).
      on_overflow="error",                 # error | drop.
      num_layers=6,
      num_heads=8,
      ffn_dim=2048,
      num_bg_slots=5,                      # bg_slots (NUM_SLOTS in the authors' configs).
      inference_select_threshold=0.01,     # 0.01 YTVIS, 0.1 OVIS.
      aux_inference_select_threshold=0.01,  # the segmenter's score at frame 0 (MA:515-516).
      keep_threshold=0.01,                 # the slot branch's score gating tracks when ovis_infer.
      ovis_infer=False,
      kick_out_frame_num=8,
      noise_frame_num=5,
      max_num=20,                          # the video keeps the top 20 (sequence x class).
      matcher="host",                      # the slot branch's Hungarian: host (scipy) | device.
      # Training (reference/dvis_daq.md "Training").
      training_select_threshold=0.02,      # 0.02 YTVIS, 0.1 OVIS.
      using_frame_num=(2, 5),              # clip length per stage.
      steps=(10000,),                      # the step that starts stage 3.
      dtype=ml_collections.FieldReference(None, field_type=str),   # None = follow the inputs.
      param_dtype="float32",
  ))


def tiny(section: ml_collections.ConfigDict) -> None:
  section.update(num_slots=48, num_layers=1, num_heads=4, ffn_dim=32, steps=(2,))


@dataclasses.dataclass(frozen=True)
class Options:
  """The section's values the frame step reads (static)."""
  inference_select_threshold: float = 0.01
  aux_inference_select_threshold: float = 0.01
  keep_threshold: float = 0.01
  ovis_infer: bool = False
  kick_out_frame_num: int = 8
  matcher: str = "host"


def options(section) -> Options:
  return Options(**{f.name: section.get(f.name, f.default) for f in dataclasses.fields(Options)})


def validate(section, config) -> None:
  from o2vis_jax.defaults import segmenter as segmenter_defaults  # (defaults imports the methods)
  path = f"config.{SECTION}"
  config_validation.check_choice(f"{path}.on_overflow", section.get("on_overflow", "error"), OVERFLOW)
  config_validation.check_choice(f"{path}.matcher", section.get("matcher", "host"), hungarian_lib.MATCHERS)
  for name in ("dtype", "param_dtype"):
    if section.get(name) is not None:
      config_validation.check_choice(f"{path}.{name}", section.get(name), segmenter_defaults.DTYPES)
  config_validation.check_positive(section, path, ("num_slots", "num_layers", "num_heads", "ffn_dim",
                                                   "num_bg_slots", "kick_out_frame_num", "max_num"))
  config_validation.check_positive(section, path, ("noise_frame_num",), minimum=0)
  for name in ("inference_select_threshold", "aux_inference_select_threshold", "keep_threshold",
               "training_select_threshold"):
    config_validation.check_range(f"{path}.{name}", section.get(name), 0.0, 1.0)
  model = config.get("model") if hasattr(config, "get") else None
  if model is not None and model.get("hidden_dim") and section.get("num_heads"):
    config_validation.check_divisible("config.model.hidden_dim", model.hidden_dim, f"{path}.num_heads",
                                      section.num_heads)
