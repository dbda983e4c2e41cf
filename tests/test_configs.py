"""Every config file and variant loads, carries the REFERENCE.md section 10 values, and resolves (its
association method from the registry, and that method's switches) to the intended setting (Table 1
settings and Table 3 ablations)."""

import glob
import importlib
import os

from absl import flags
import ml_collections
from ml_collections import config_flags
import pytest

from configs import ablations_r50, r50_common
from o2vis_jax import association

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


def _options(config):
  """(the method's name, its resolved switches): o2vis / o2vis_te_only `Options`, training_free
  (memory, use_ohm, matcher)."""
  method = association.method_of(config)
  resolve = getattr(method, "options", None) or getattr(method, "resolved", None) or method.section
  return method.name, resolve(config)


def test_every_config_and_variant_loads_and_resolves():
  seen = set()
  for name, variant, config in _all_configs():
    assert isinstance(config, ml_collections.ConfigDict), (name, variant)
    method, _ = _options(config)
    assert method in association.names(), (name, variant)
    assert "mode" not in config.tracker and "baseline" not in config.tracker, (name, variant)
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
  method, options = _options(config)
  assert (method, options.anchor, options.current_features, options.early_matching) == (
      "o2vis", "adaptive", "tracker", False)              # the released LOMM_Online_R50.yaml
  ytvis_instances = r50_common.DATASETS["ytvis19"][3]
  assert config.data.max_instances == (40 if name == "ovis_r50" else ytvis_instances)
  assert ytvis_instances < 40


EXPECTED_ABLATIONS = {
    # variant: (association method, training_free memory, training_free matching, anchor, early_matching)
    "a1_none_hungarian": ("training_free", "none", "hungarian", None, None),
    "a2_sim_hungarian": ("training_free", "similarity", "hungarian", None, None),
    "a3_momentum_hungarian": ("training_free", "momentum", "hungarian", None, None),
    "a4_iom_hungarian": ("training_free", "iom", "hungarian", None, None),
    "a5_iom_ohm": ("training_free", "iom", "ohm", None, None),
    "a6_te_only": ("o2vis_te_only", None, None, None, True),
    "a7_full": ("o2vis", None, None, "adaptive", True),
    "anchor_current": ("o2vis", None, None, "current", True),
    "anchor_memory": ("o2vis", None, None, "memory", True),
    "anchor_adaptive": ("o2vis", None, None, "adaptive", True),
    "early_off": ("o2vis", None, None, "adaptive", False),
    "early_on": ("o2vis", None, None, "adaptive", True),
}


@pytest.mark.parametrize("variant", ablations_r50.VARIANTS)
def test_ablation_variants_resolve_to_their_switches(variant):
  assert set(EXPECTED_ABLATIONS) == set(ablations_r50.VARIANTS)
  expected_method, memory, matching, anchor, early = EXPECTED_ABLATIONS[variant]
  for dataset in ablations_r50.DATASETS:
    config = ablations_r50.get_config(f"{variant},{dataset}")
    method, options = _options(config)
    assert method == expected_method
    assert config.data.dataset == r50_common.DATASETS[dataset][0]
    assert config.model.num_classes == r50_common.DATASETS[dataset][1]
    if method == "training_free":
      assert options == (memory, matching == "ohm", "host")
      assert (config.training_free.memory, config.training_free.matching) == (memory, matching)
      assert config.training_free.top_k == 10
      assert association.method_of(config).max_num(config, config.inference.max_num) == 10
      continue
    assert options.early_matching == early
    if method == "o2vis":
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
  method, options = _options(config)
  assert method == "o2vis"
  assert (options.anchor, options.early_matching, config.model.num_classes, config.inference.max_num) == (
      "memory", True, 25, 20)


@pytest.mark.parametrize("variant", ["a1_none_hungarian", "a6_te_only", "a7_full"])
def test_config_flags_overrides_a_none_valued_switch(variant):
  """A switch left at None (typed by its FieldReference) stays overridable on the command line in every
  kind of variant (training-free, T_E-only, full model)."""
  argv = ["prog", f"--config={os.path.join(CONFIG_DIR, 'ablations_r50.py')}:{variant}",
          "--config.tracker.current_features=segmenter", "--config.training_free.memory=momentum"]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
  values(argv)
  config = values.config
  assert config.tracker.current_features == "segmenter", variant
  assert config.training_free.memory == "momentum", variant
