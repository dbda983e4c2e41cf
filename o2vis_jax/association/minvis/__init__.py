"""MinVIS (`minvis`): each frame's normed queries are matched by Hungarian to the previous frame's
aligned queries; no memory, no occupancy (Table 3(a) row 1; REFERENCE.md section 11 'none' + Hungarian;
MinVIS, Huang et al. 2022). The segmenter's predictions re-ordered into slots are the outputs; a video keeps
`top_k` = 10 instances, as MinVIS.inference_video does.

The same computation as `training_free` with memory='none', matching='hungarian', as its own method with
its own section (`config.minvis`) so that MinVIS is one name in comparisons.
"""

import ml_collections

from o2vis_jax import config_validation
from o2vis_jax.association import base
from o2vis_jax.association.ops import hungarian as hungarian_lib
from o2vis_jax.association.training_free import TrainingFree


class MinVIS(TrainingFree):
  name = "minvis"
  description = "MinVIS: no memory + Hungarian on the segmenter's outputs, Table 3(a) row 1"

  def default_config(self) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        top_k=10,               # MinVIS.inference_video keeps 10 (not inference.max_num).
        matcher="host",         # host (scipy via pure_callback) | device (pure JAX, exact).
    ))

  def resolve_section(self, section):
    matcher = config_validation.check_choice(f"config.{self.section_name}.matcher",
                                             section.get("matcher", "host"), hungarian_lib.MATCHERS)
    return "none", False, matcher


METHOD = base.register(MinVIS())
