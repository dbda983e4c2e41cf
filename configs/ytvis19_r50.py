"""R50 O2VIS on YouTube-VIS 2019 (K=40), SPEC Table 1 setting."""

from configs import base


def get_config():
  config = base.get_base_config()
  config.model.num_classes = 40
  config.data.dataset = "ytvis_2019"
  config.inference.max_num = 10
  return config
