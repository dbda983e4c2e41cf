"""O2VIS (`o2vis`): the trackers T_E and T_A on the Instance Occupancy Memory with occupancy-guided
Hungarian matching (SPEC sections 2-5; REFERENCE.md sections 1-7, 13).

- `config.py`: the section (`config.tracker`), `semantics` and its single switches.
- `step.py`: the frame step and its state (M, S, O).
- `loss.py`: the trackers' criterion, Eq. 10-12 (with early training, Eq. 14).
- `convert.py`: the LOMM checkpoint's `tracker.*` weights.
The Flax module is `o2vis_jax.models.tracker.Tracker`.
"""

from typing import Any, Dict

import jax
import ml_collections

from o2vis_jax import losses
from o2vis_jax.association import base
from o2vis_jax.association.o2vis import config as config_lib
from o2vis_jax.association.o2vis import convert, loss as loss_lib, step as step_lib
from o2vis_jax.models import tracker as tracker_lib


def num_classes_of(params) -> int:
  """K from the class head's kernel [C, K+1]."""
  return params["class_embed"]["kernel"].shape[-1] - 1


def early_training_phase(config, options: config_lib.Options, step: int) -> str:
  """'early' for the first `train.early_training_fraction` of the steps when early training is on
  (Eq. 9, 14; REFERENCE.md 7.4: the first half in the reference), else 'main'."""
  train = config.get("train") if hasattr(config, "get") else None
  fraction = float(train.get("early_training_fraction", 0.5)) if train is not None else 0.5
  if options.early_matching and step < fraction * config.num_train_steps:
    return "early"
  return "main"


class ReferringTrackerMethod(base.Method):
  """What O2VIS and its T_E-only model share: the section `config.tracker`, a referring-tracker Flax
  module built from it (`module_class`), its Xavier initialisation, the loss options, the state outputs."""
  config_key = config_lib.SECTION
  module_class = tracker_lib.Tracker
  early_matching_default = False

  def default_config(self) -> ml_collections.ConfigDict:
    return config_lib.default_config()

  def tiny(self, section) -> None:
    config_lib.tiny(section)

  def validate_section(self, section, config) -> None:
    super().validate_section(section, config)
    config_lib.validate(section, config, self.early_matching_default)

  def options(self, config) -> config_lib.Options:
    return config_lib.resolve_options(self.section(config), self.early_matching_default)

  def module(self, config, *, hidden_dim: int, num_classes: int):
    return self.module_class.from_section(self.section(config), hidden_dim=hidden_dim,
                                          num_classes=num_classes)

  def bound_module(self, config, params, frame):
    """The module bound to `params`, sized by the frame (C) and the class head (K)."""
    return self.module(config, hidden_dim=frame["embeds_without_norm"].shape[-1],
                       num_classes=num_classes_of(params)).bind({"params": params})

  def init_params(self, config, rng, *, num_classes, hidden_dim):
    """Xavier-uniform kernels, zero biases, unit norm scales (the reference trackers' reset)."""
    module = self.module(config, hidden_dim=hidden_dim, num_classes=num_classes)
    return tracker_lib.xavier_params(module, rng, hidden_dim)

  def state_outputs(self, state) -> Dict[str, Any]:
    return {"memory": state.memory, "occupied": state.occupied}

  def loss_config(self, config) -> losses.LossConfig:
    """config.loss with the section's semantics (T_E targets, L_sim) and matcher as defaults."""
    section = self.section(config)
    semantics = section.get("semantics", "reference")
    return losses.loss_config_from(config, target_rule=semantics, sim_rule=semantics,
                                   matcher=section.get("matcher", "host"))


class O2VIS(ReferringTrackerMethod):
  """The full online O2VIS: IOM + OHM + T_E + T_A (Table 3(a) row 7)."""
  name = "o2vis"
  description = "the full O2VIS: T_E + T_A on the IOM with OHM, Table 3(a) row 7"
  required_inputs = ("embeds", "embeds_without_norm", "mask_features")
  phases = ("early", "main")
  checkpoint_prefixes = (convert.PREFIX,)

  def init_state(self, config, *, num_queries, hidden_dim, dtype):
    return step_lib.init_state(num_queries, hidden_dim, dtype)

  def resolve_phase(self, config, train: bool, phase) -> bool:
    """Whether this step matches early (Eq. 9): training in the 'early' phase; with no phase given,
    whenever the section turns early matching on."""
    if not train:
      return False
    if phase is None:
      return self.options(config).early_matching
    return phase == "early"

  def step(self, config, params, state, frame, *, train, phase=None):
    return step_lib.tracker_step(self.bound_module(config, params, frame), self.options(config), train,
                                 self.resolve_phase(config, train, phase), state, frame)

  def phase(self, config, step: int) -> str:
    return early_training_phase(config, self.options(config), step)

  def loss(self, config, key, outputs, targets, num_masks, *, phase):
    """Eq. 10-12 (`loss.tracker_criterion`); in the early phase the GT assignment is made on the
    segmenter's predictions re-ordered by sigma_t (Eq. 14)."""
    matcher_outputs = None
    if phase == "early":
      matcher_outputs = dict(pred_logits=outputs["matcher_logits"], pred_masks=outputs["matcher_masks"])
    return loss_lib.tracker_criterion(key, loss_lib.tracker_outputs_from_track(outputs), targets,
                                      num_masks, self.loss_config(config), matcher_outputs=matcher_outputs)

  def from_reference(self, state_dict, num_heads):
    return convert.tracker_from_reference(state_dict, num_heads)


METHOD = base.register(O2VIS())
