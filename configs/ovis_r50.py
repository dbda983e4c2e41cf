"""R50 O2VIS on OVIS (K=25)."""

from configs import base


def get_config():
  config = base.get_base_config()
  config.model.num_classes = 25
  config.data.dataset = "ovis"
  config.inference.max_num = 20
  return config
