"""R50 O2VIS on YouTube-VIS 2021 (K=40)."""

from configs import base


def get_config():
  config = base.get_base_config()
  config.model.num_classes = 40
  config.data.dataset = "ytvis_2021"
  config.inference.max_num = 10
  return config
