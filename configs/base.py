"""The base config every setting starts from: the sections of `configs/parts`."""

import ml_collections

from configs.parts import data, inference, loss, segmenter, tracker, train


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.model = segmenter.get()
  config.tracker = tracker.get()
  config.data = data.get()
  config.train = train.get()
  config.loss = loss.get()
  config.inference = inference.get()
  config.seed = 0
  config.batch_size = 8            # global, over all devices and hosts.
  config.num_train_steps = 160000
  config.checkpoint_every_steps = 5000
  config.log_every_steps = 50
  config.init_checkpoint = ""     # converted checkpoint dir to start from (segmenter, maybe tracker).
  config.init_tracker = False     # also take the tracker from init_checkpoint.
  return config


def make_tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks every section in place for unit tests (2-core CPU)."""
  for part in (segmenter, tracker, data, train, loss, inference):
    part.tiny(config)
  config.batch_size = 2
  config.num_train_steps = 4
  config.checkpoint_every_steps = 2
  config.log_every_steps = 1
  return config
