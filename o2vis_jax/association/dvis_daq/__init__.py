"""DVIS-DAQ (`dvis_daq`): dynamic anchor queries; tracks are born from emergence rows, live through
invalid frames, die after `kick_out_frame_num` of them (reference/dvis_daq.md; Zhou et al. 2024; code
github zhang-tao-whu/DVIS_Plus, folder DVIS_DAQ/). The number of tracks changes over the video: here it is
a fixed table of `num_slots` sequence slots (`step.State`) under `lax.scan`.

- `config.py`: the section `config.association.dvis_daq`.
- `step.py`: the sequence table and the frame step (`VideoInstanceCutter.inference`).
- `scoring.py`: the video-level scoring (noise filter, mean logits, top 20) and the release of dead
  sequences between chunks of streaming inference.
- `convert.py`: the authors' `tracker.*` weights (+ the segmenter's `query_feat`).
The Flax module is `o2vis_jax.models.dvis_daq.VideoInstanceCutter`.

Per-frame outputs: pred_logits [S, K+1], pred_masks [S, h, w], slot_valid [S], slot_appearance [S],
slot_ids [S]; state outputs `live` [S] and `num_dropped` [].
"""

from typing import Any, Dict

import jax
import jax.numpy as jnp
import ml_collections

from o2vis_jax import losses
from o2vis_jax.association import base
from o2vis_jax.association.dvis_daq import config as config_lib
from o2vis_jax.association.dvis_daq import convert, loss as loss_lib, scoring, step as step_lib
from o2vis_jax.association.dvis_daq import train_step
from o2vis_jax.models import dvis_daq as model_lib
from o2vis_jax.models.layers import resolve_dtype


class DVISDAQ(base.Method):
  name = "dvis_daq"
  description = "DVIS-DAQ: dynamic anchor queries, births / kick-outs on a table of sequence slots"
  config_key = config_lib.SECTION
  required_inputs = ("embeds", "logits", "masks", "mask_features")
  score_inputs = ("pred_logits", "slot_valid", "slot_ids", "num_dropped")
  # The emergence / disappearance schedule (MA:249-257): stage 2 (2-frame clips, half of the matched tracks
  # dropped) before `steps[0]`, stage 3 (5-frame clips, the score threshold, disappearance) after.
  phases = ("stage2", "stage3")
  checkpoint_prefixes = (convert.PREFIX,)
  shared_checkpoint_keys = (convert.QUERY_FEAT,)

  def default_config(self) -> ml_collections.ConfigDict:
    return config_lib.default_config()

  def tiny(self, section) -> None:
    config_lib.tiny(section)

  def validate_section(self, section, config) -> None:
    super().validate_section(section, config)
    config_lib.validate(section, config)

  def options(self, config) -> config_lib.Options:
    return config_lib.options(self.section(config))

  def module(self, config, *, hidden_dim: int, num_classes: int) -> model_lib.VideoInstanceCutter:
    section = self.section(config)
    return model_lib.VideoInstanceCutter(
        hidden_dim=hidden_dim, num_classes=num_classes, num_layers=section.num_layers,
        num_heads=section.num_heads, ffn_dim=section.ffn_dim, num_bg_slots=section.num_bg_slots,
        dtype=resolve_dtype(section.get("dtype")), param_dtype=resolve_dtype(section.get("param_dtype",
                                                                                         "float32")))

  def init_params(self, config, rng, *, num_classes, hidden_dim):
    """Flax's default initialisation of the tracker, plus `query_feat` [N, C] (the segmenter's learned
    queries, which the slot branch reads; a converted checkpoint copies the segmenter's)."""
    module = self.module(config, hidden_dim=hidden_dim, num_classes=num_classes)
    model = config.get("model") if hasattr(config, "get") else None
    num_queries = model.get("num_queries", 100) if model is not None else 100
    tracker_key, query_key = jax.random.split(rng)
    params = dict(module.init(tracker_key, jnp.zeros((4, hidden_dim)), jnp.zeros((2, 2, hidden_dim)))["params"])
    params["query_feat"] = jax.random.normal(query_key, (num_queries, hidden_dim))
    return params

  def bound_module(self, config, params, frame):
    hidden_dim = frame["embeds"].shape[-1]
    num_classes = params["class_embed"]["kernel"].shape[-1] - 1
    tracker = {k: v for k, v in params.items() if k != "query_feat"}
    return self.module(config, hidden_dim=hidden_dim, num_classes=num_classes).bind({"params": tracker})

  def init_state(self, config, *, num_queries, hidden_dim, dtype):
    del num_queries
    return step_lib.init_state(self.section(config).num_slots, hidden_dim, dtype)

  def step(self, config, params, state, frame, *, train, phase=None):
    module = self.bound_module(config, params, frame)
    if not train:
      return step_lib.inference_step(module, self.options(config), params["query_feat"], state, frame)
    missing = [k for k in train_step.TRAINING_INPUTS if k not in frame]
    if missing:
      raise KeyError(f"association method 'dvis_daq': training needs the frame's ground truth {missing} "
                     f"(`training_inputs`)")
    return train_step.training_step(module, self.options(config), self.section(config),
                                    2 if phase == "stage2" else 3, params["query_feat"], state, frame,
                                    train_step.cost_weights(self.loss_config(config)))

  def state_outputs(self, state) -> Dict[str, Any]:
    return {"live": state.live, "num_dropped": state.num_dropped}

  # --- training (train_step.py, loss.py) ---------------------------------------------------------

  def phase(self, config, step: int) -> str:
    return "stage2" if step < tuple(self.section(config).steps)[0] else "stage3"

  def loss_config(self, config) -> losses.LossConfig:
    return losses.loss_config_from(config, matcher=self.section(config).get("matcher", "host"))

  # The segmenter's learned queries are the segmenter's (frozen): the slot branch only reads them.
  frozen_in_training = ("query_feat",)

  def params_from_segmenter(self, config, params, segmenter_params):
    params = dict(params)
    params["query_feat"] = jnp.array(segmenter_params["predictor"]["query_feat"])
    return params

  def training_inputs(self, config, targets, keys):
    return train_step.training_inputs(targets, keys)

  def loss(self, config, key, outputs, targets, num_masks, *, phase):
    frames = tuple(self.section(config).using_frame_num)
    return loss_lib.daq_criterion(key, outputs, targets, num_masks, self.loss_config(config),
                                  frames[0] if phase == "stage2" else frames[-1])

  # --- video-level scoring (scoring.py) ----------------------------------------------------------

  def max_num(self, config, default: int) -> int:
    del default
    return int(self.section(config).max_num)

  def score_init(self, config, num_slots, num_classes):
    return scoring.init(num_slots, num_classes)

  def score_update(self, config, accumulator, outputs):
    return scoring.update(self.section(config), accumulator, outputs)

  def score_instances(self, config, accumulator, max_num):
    return scoring.instances(self.section(config), accumulator, max_num)

  def mean_logits(self, accumulator):
    return scoring.mean_logits(accumulator)

  def release(self, config, state, accumulator):
    return scoring.release(state, accumulator)

  # --- weight conversion -------------------------------------------------------------------------

  def from_reference(self, state_dict, num_heads):
    return convert.from_reference(state_dict, num_heads)

  def claims(self, state_dict) -> bool:
    return convert.is_daq(state_dict)


METHOD = base.register(DVISDAQ())
