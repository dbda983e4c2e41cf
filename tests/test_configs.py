"""Every config file and variant loads, carries the REFERENCE.md section 10 values, and resolves
(`video_model.resolve_options`) to the intended switches (Table 1 settings and Table 3 ablations)."""

import glob
import importlib
import os

from absl import flags
import ml_collections
from ml_collections import config_flags
import pytest

from configs import ablations_r50, r50_common
from o2vis_jax import video_model

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
VARIANTS = {"synthetic_tiny": ("segmenter+tracker", "segmenter", "tracker"),
            "ablations_r50": tuple(f"{v},{d}" for v in ablations_r50.VARIANTS
                                   for d in ablations_r50.DATASETS)}
TABLE1 = {"ytvis19_r50": ("ytvis_2019", 40, 10), "ytvis21_r50": ("ytvis_2021", 40, 10),
          "ytvis22_r50": ("ytvis_2022", 40, 10), "ovis_r50": ("ovis", 25, 20)}


def _config_modules():
  names = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(CONFIG_DIR, "*.py")))
  return [n for n in names if hasattr(importlib.import_module(f"configs.{n}"), "get_config")]


def _all_configs():
  for name in _config_modules():
    module = importlib.import_module(f"configs.{name}")
    for variant in VARIANTS.get(name, (None,)):
      yield name, variant, module.get_config() if variant is None else module.get_config(variant)


def test_every_config_and_variant_loads_and_resolves():
  seen = set()
  for name, variant, config in _all_configs():
    assert isinstance(config, ml_collections.ConfigDict), (name, variant)
    options = video_model.resolve_options(config.tracker)
    assert options.mode in video_model.MODES, (name, variant)
    assert config.batch_size > 0 and config.num_train_steps > 0
    seen.add(name)
  assert set(TABLE1) | {"ablations_r50", "synthetic_tiny", "tiny"} <= seen


@pytest.mark.parametrize("name", sorted(TABLE1))
def test_table1_r50_values(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  dataset, num_classes, max_num = TABLE1[name]
  assert (config.data.dataset, config.model.num_classes, config.inference.max_num) == (
      dataset, num_classes, max_num)
  assert config.train.task == "tracker" and config.init_checkpoint == ""   # set by the user
  assert config.train.learning_rate == 1e-4 and config.train.weight_decay == 0.05
  assert config.num_train_steps == 160000 and tuple(config.train.decay_steps) == (112000,)
  assert config.train.decay_factor == 0.1 and config.train.warmup_steps == 10
  assert config.train.clip_grad_norm == 0.01
  assert config.batch_size == 8 and config.data.num_frames == 5 and config.data.sampling_frame_range == 2
  assert config.data.coco_ratio == 1.0 and config.inference.min_size_test == 480
  assert (config.model.num_queries, config.model.hidden_dim, config.model.backbone.depth) == (100, 256, 50)
  assert (config.tracker.num_layers, config.tracker.num_heads, config.tracker.ffn_dim) == (3, 8, 2048)
  assert config.loss.num_points == 12544 and config.loss.no_object_weight == 0.1
  assert (config.loss.class_weight, config.loss.mask_weight, config.loss.dice_weight) == (2.0, 5.0, 5.0)
  options = video_model.resolve_options(config.tracker)
  assert (options.mode, options.anchor, options.current_features, options.early_matching) == (
      "trackers", "adaptive", "tracker", False)           # the released LOMM_Online_R50.yaml
  ytvis_instances = r50_common.DATASETS["ytvis19"][3]
  assert config.data.max_instances == (40 if name == "ovis_r50" else ytvis_instances)
  assert ytvis_instances < 40


EXPECTED_ABLATIONS = {
    # variant: (mode, baseline memory, baseline matching, anchor, early_matching)
    "a1_none_hungarian": ("baseline", "none", "hungarian", None, None),
    "a2_sim_hungarian": ("baseline", "similarity", "hungarian", None, None),
    "a3_momentum_hungarian": ("baseline", "momentum", "hungarian", None, None),
    "a4_iom_hungarian": ("baseline", "iom", "hungarian", None, None),
    "a5_iom_ohm": ("baseline", "iom", "ohm", None, None),
    "a6_te_only": ("te_only", None, None, None, True),
    "a7_full": ("trackers", None, None, "adaptive", True),
    "anchor_current": ("trackers", None, None, "current", True),
    "anchor_memory": ("trackers", None, None, "memory", True),
    "anchor_adaptive": ("trackers", None, None, "adaptive", True),
    "early_off": ("trackers", None, None, "adaptive", False),
    "early_on": ("trackers", None, None, "adaptive", True),
}


@pytest.mark.parametrize("variant", ablations_r50.VARIANTS)
def test_ablation_variants_resolve_to_their_switches(variant):
  assert set(EXPECTED_ABLATIONS) == set(ablations_r50.VARIANTS)
  mode, memory, matching, anchor, early = EXPECTED_ABLATIONS[variant]
  for dataset in ablations_r50.DATASETS:
    config = ablations_r50.get_config(f"{variant},{dataset}")
    options = video_model.resolve_options(config.tracker)
    assert options.mode == mode
    assert config.data.dataset == r50_common.DATASETS[dataset][0]
    assert config.model.num_classes == r50_common.DATASETS[dataset][1]
    if mode == "baseline":
      assert (options.baseline_memory, options.baseline_matching) == (memory, matching)
      assert config.tracker.baseline.top_k == 10
      continue
    assert options.early_matching == early
    if mode == "trackers":
      assert options.anchor == anchor and config.tracker.num_layers == 3
      assert config.num_train_steps == 160000 and config.train.early_training_fraction == 0.5
    else:  # LOMM_Online_R50_E: 6 T_E layers, 40k iterations with the step at 28k, always early.
      assert config.tracker.num_layers == 6 and config.num_train_steps == 40000
      assert tuple(config.train.decay_steps) == (28000,) and config.train.early_training_fraction == 1.0
  # The default dataset is YouTube-VIS 2019.
  assert ablations_r50.get_config(variant).data.dataset == "ytvis_2019"


def test_ablation_variant_errors_name_the_choices():
  with pytest.raises(ValueError, match="a7_full"):
    ablations_r50.get_config("a8")
  with pytest.raises(ValueError, match="ovis"):
    ablations_r50.get_config("a7_full,davis")


def test_config_flags_loads_a_variant():
  """`--config configs/ablations_r50.py:VARIANT,DATASET` as scripts/train.py parses it."""
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values)
  values(["prog", f"--config={os.path.join(CONFIG_DIR, 'ablations_r50.py')}:anchor_memory,ovis"])
  config = values.config
  options = video_model.resolve_options(config.tracker)
  assert (options.anchor, options.early_matching, config.model.num_classes, config.inference.max_num) == (
      "memory", True, 25, 20)
