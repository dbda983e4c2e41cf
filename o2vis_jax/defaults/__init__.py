"""The default experiment config, section by section: the library's defaults (configs/ build on them).

Each section module has `get()` (paper-scale defaults) and `tiny(config)` (in-place overrides that make
the section small enough for unit tests on a 2-core CPU):
  model      `defaults/segmenter.py`   the Mask2Former segmenter (SPEC section 1)
  data       `defaults/data.py`        the input pipeline
  train      `defaults/train.py`       the optimiser, the schedule, the task
  loss       `o2vis_jax.losses`        loss weights and point sampling (one source: `LossConfig`)
  inference  `defaults/inference.py`   video inference
  association                          which association method runs (`association.method`)
  one section per registered association method, from its `default_config()` (O2VIS: `tracker`).
  refiner    `o2vis_jax.refiner`       the offline temporal refiner (train.task='refiner', offline inference)
"""

import ml_collections

from o2vis_jax import association, losses, refiner
from o2vis_jax.defaults import data, inference, segmenter, train


def base_config() -> ml_collections.ConfigDict:
  """Every section at its default; `association.method = 'o2vis'`."""
  config = ml_collections.ConfigDict()
  config.model = segmenter.get()
  config.association = association.association_config("o2vis")
  for name in association.names():
    method = association.get(name)
    if association.base.section_of(config, method.section_name) is None:
      association.base.set_section(config, method.section_name, method.default_config())
  config.data = data.get()
  config.train = train.get()
  config.loss = losses.default_config()
  config.inference = inference.get()
  config.refiner = refiner.default_config()
  config.seed = 0
  config.batch_size = 8            # global, over all devices and hosts.
  config.num_train_steps = 160000
  config.checkpoint_every_steps = 5000
  config.log_every_steps = 50
  config.init_checkpoint = ""     # converted checkpoint dir to start from (segmenter, maybe tracker).
  config.init_tracker = False     # also take the association method's params from init_checkpoint.
  config.init_refiner = False     # train.task='refiner': also take the refiner's params from it.
  return config


def make_tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks every section in place for unit tests (2-core CPU)."""
  for part in (segmenter, data, train, inference):
    part.tiny(config)
  losses.tiny(config)
  refiner.tiny(config.refiner)
  seen = set()
  for name in association.names():
    method = association.get(name)
    section = association.base.section_of(config, method.section_name)
    if section is not None and method.section_name not in seen:
      method.tiny(section)
      seen.add(method.section_name)
  config.batch_size = 2
  config.num_train_steps = 4
  config.checkpoint_every_steps = 2
  config.log_every_steps = 1
  return config
