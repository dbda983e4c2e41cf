"""`config_validation.validate`: every shipped config passes; each kind of bad field (unknown name, wrong
type, value outside its allowed set or range) is one ConfigError naming the field, the allowed values or
the nearest known name, whether the config comes from a config file with overrides or from JSON."""

import json
import os

from absl import flags
import ml_collections
from ml_collections import config_flags
import pytest

import test_configs
from configs import synthetic_tiny, tiny
from o2vis_jax import association, cli, config_validation, defaults
from o2vis_jax.config_validation import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _as_json(config) -> ml_collections.ConfigDict:
  """`config` as a checkpoint's config.json reads back: no types attached, lists for tuples."""
  return ml_collections.ConfigDict(json.loads(config.to_json()))


def _with(path: str, value, config=None) -> ml_collections.ConfigDict:
  """The tiny config, as a config.json holding `value` at dotted `path` reads back."""
  content = json.loads((config if config is not None else tiny.get_config()).to_json())
  *sections, name = path.split(".")
  node = content
  for section in sections:
    node = node[section]
  node[name] = value
  return ml_collections.ConfigDict(content)


def test_every_shipped_config_and_variant_validates():
  count = 0
  for name, variant, config in test_configs._all_configs():
    assert config_validation.validate(config) is config, (name, variant)
    config_validation.validate(_as_json(config))        # as a training export writes it
    if association.method_of(config).trainable:
      config_validation.validate(config, training=True)
    count += 1
  assert count >= 50


def test_the_shipped_checkpoint_config_validates():
  with open(os.path.join(REPO, "assets", "synthetic_tiny", "config.json")) as f:
    config_validation.validate(ml_collections.ConfigDict(json.load(f)))


def test_missing_fields_and_sections_are_allowed():
  """Configs written before a field existed (or a converter's partial config) fall back on defaults."""
  config = ml_collections.ConfigDict(dict(model=dict(hidden_dim=32, num_classes=3),
                                          association=dict(method="o2vis"), tracker=dict(num_layers=2)))
  config_validation.validate(config)


@pytest.mark.parametrize("path,value,message", [
    # unknown fields: the nearest known name, at every depth
    ("trian", {}, "config.trian is not a config field; did you mean config.train?"),
    ("model.num_querys", 10, "config.model.num_querys is not a config field; did you mean "
                             "config.model.num_queries?"),
    ("model.backbone.dept", 50, "did you mean config.model.backbone.depth?"),
    ("tracker.matchr", "host", "did you mean config.tracker.matcher?"),
    ("minvis.memory", "iom", "config.minvis.memory is not a config field; known: matcher, top_k"),
    # types, against the library defaults
    ("model.num_queries", "ten", "config.model.num_queries='ten' must be an int (got str)"),
    ("model.num_queries", 10.0, "config.model.num_queries=10.0 must be an int"),
    ("train.learning_rate", "1e-4", "config.train.learning_rate='1e-4' must be a number"),
    ("data.crop_enabled", 1, "config.data.crop_enabled=1 must be a bool"),
    ("data.dataset", 7, "config.data.dataset=7 must be a string"),
    ("tracker.anchor", 3, "config.tracker.anchor=3 must be a string"),   # None, typed by a FieldReference
    ("tracker.early_matching", "yes", "config.tracker.early_matching='yes' must be a bool"),
    ("data.synthetic_radius_range", 0.2, "config.data.synthetic_radius_range=0.2 must be a list of 2 values"),
    ("data.synthetic_radius_range", [0.1, 0.2, 0.3], "must have 2 entries"),
    ("data.pad_buckets", [[96, "96"]], "config.data.pad_buckets[0][1]='96' must be an int"),
    ("model.backbone", 50, "config.model.backbone=50 must be a section"),
    ("batch_size", None, "config.batch_size=None must be an int"),
    # allowed values: listed
    ("tracker.matcher", "gpu", "config.tracker.matcher must be one of ('host', 'device'), got 'gpu'"),
    ("tracker.anchor", "mean", "config.tracker.anchor must be one of ('adaptive', 'adaptive_paper', "
                               "'current', 'memory'), got 'mean'"),
    ("tracker.semantics", "both", "config.tracker.semantics must be one of ('reference', 'paper')"),
    ("tracker.dtype", "float8", "config.tracker.dtype must be one of"),
    ("training_free.memory", "ema", "config.training_free.memory must be one of ('none', 'similarity', "
                                    "'momentum', 'iom'), got 'ema'"),
    ("minvis.matcher", "gpu", "config.minvis.matcher must be one of ('host', 'device')"),
    ("association.method", "o2vsi", "config.association.method='o2vsi' is not a registered association "
                                    "method; did you mean 'o2vis'?"),
    ("train.task", "trackr", "config.train.task must be one of ('tracker', 'segmenter', "
                             "'segmenter+tracker', 'refiner'), got 'trackr'"),
    ("data.dataset", "ytvis2019", "config.data.dataset must be one of"),
    ("model.backbone.depth", 51, "config.model.backbone.depth must be one of (0, 18, 34, 50, 101), got 51"),
    ("model.backbone.norm", "batch_norm", "config.model.backbone.norm must be one of ('frozen_bn', "
                                          "'group_norm')"),
    ("model.dtype", "float16", "config.model.dtype must be one of ('float32', 'bfloat16', 'float64')"),
    # ranges and consistency
    ("data.synthetic_radius_range", [0.3, 0.2], "config.data.synthetic_radius_range=(0.3, 0.2) must be "
                                                "(min, max) with 0 < min <= max <= 0.5"),
    ("data.pad_buckets", [[96, 100]], "config.data.pad_buckets[0]=(96, 100): sizes must be positive "
                                      "multiples of 32"),
    ("data.flip_prob", 1.5, "config.data.flip_prob=1.5 must be >= 0.0 and <= 1.0"),
    ("model.hidden_dim", 30, "config.model.hidden_dim=30 must be divisible by config.model.num_heads=4"),
    ("tracker.num_heads", 5, "config.model.hidden_dim=32 must be divisible by config.tracker.num_heads=5"),
    ("loss.num_points", 0, "config.loss.num_points=0 must be >= 1"),
    ("train.decay_steps", [5, 3], "config.train.decay_steps=(5, 3) must be in increasing order"),
    ("inference.size_divisibility", 20, "config.inference.size_divisibility=20 must be a multiple of 32"),
    ("batch_size", 0, "config.batch_size=0 must be >= 1"),
    ("training_free.top_k", 0, "config.training_free.top_k=0 must be >= 1"),
])
def test_a_bad_field_is_one_line_naming_it(path, value, message):
  with pytest.raises(ConfigError) as error:
    config_validation.validate(_with(path, value))
  assert message in str(error.value)
  assert "\n" not in str(error.value)
  assert isinstance(error.value, cli.InputError)      # scripts report it in one line, exit 2


def test_ints_are_accepted_where_floats_are_expected():
  config_validation.validate(_with("train.learning_rate", 1))
  config_validation.validate(_with("data.synthetic_radius_range", [0.1, 0.2]))   # a list, from JSON


def _parse(argv):
  argv = ["prog", f"--config={os.path.join(REPO, 'configs', 'synthetic_tiny.py')}"] + argv
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


def test_command_line_overrides_are_validated():
  """What scripts/train.py validates right after parsing: overrides ml_collections accepts."""
  with pytest.raises(ConfigError, match=r"config.tracker.matcher must be one of \('host', 'device'\)"):
    config_validation.validate(_parse(["--config.tracker.matcher=gpu"]))
  # A pair given one number parses as a 1-tuple.
  with pytest.raises(ConfigError, match="config.data.synthetic_radius_range=.*must have 2 entries"):
    config_validation.validate(_parse(["--config.data.synthetic_radius_range=0.2"]))
  # A switch left at None stays overridable and is checked once set.
  assert config_validation.validate(_parse(["--config.tracker.anchor=memory"])).tracker.anchor == "memory"
  with pytest.raises(ConfigError, match="config.tracker.anchor must be one of"):
    config_validation.validate(_parse(["--config.tracker.anchor=mean"]))


def test_training_needs_a_trainable_method():
  config = synthetic_tiny.get_config()
  config.association.method = "training_free"
  config_validation.validate(config)                   # fine for inference
  with pytest.raises(ConfigError, match="config.train.task='segmenter\\+tracker' trains the association "
                                        "method, but config.association.method='training_free'"):
    config_validation.validate(config, training=True)
  config.train.task = "segmenter"
  config_validation.validate(config, training=True)


class _Checked(association.Method):
  """A method with its own section and its own allowed values (the `validate_section` hook)."""
  name = "checked_for_test"

  def default_config(self):
    return ml_collections.ConfigDict(dict(window=3, mode="fast"))

  def validate_section(self, section, config):
    super().validate_section(section, config)
    config_validation.check_choice(f"config.{self.section_name}.mode", section.get("mode", "fast"),
                                   ("fast", "exact"))

  def init_state(self, config, *, num_queries, hidden_dim, dtype):
    return ()

  def step(self, config, params, state, frame, *, train):
    return state, {}


def test_a_method_validates_its_own_section():
  method = association.register(_Checked())
  try:
    config = association.with_method(tiny.get_config(), method.name)
    config_validation.validate(config)
    with pytest.raises(ConfigError, match=r"config.checked_for_test.mode must be one of \('fast', 'exact'\)"):
      config_validation.validate(_with("checked_for_test.mode", "slow", config))
    with pytest.raises(ConfigError, match="config.checked_for_test.windw is not a config field; did you "
                                          "mean config.checked_for_test.window?"):
      config_validation.validate(_with("checked_for_test.windw", 3, config))
    with pytest.raises(ConfigError, match="config.checked_for_test.window='3' must be an int"):
      config_validation.validate(_with("checked_for_test.window", "3", config))
  finally:
    association.unregister(method.name)
  # Once unregistered, its section is an unknown field of the config.
  with pytest.raises(ConfigError, match="config.checked_for_test is not a config field"):
    config_validation.validate(config)


def test_the_allowed_value_tables_agree_with_their_readers():
  from o2vis_jax import tasks
  assert set(tasks.TASKS) < set(defaults.train.TASKS)
  import o2vis_jax.datasets.builders.ytvis as ytvis   # imports TFDS
  assert set(defaults.data.DATASETS) == set(ytvis.LAYOUTS)


def test_check_data_dir_before_any_generation(tmp_path):
  from o2vis_jax import tasks
  config = tiny.get_config()
  config.data.dataset = "ovis"
  with pytest.raises(ConfigError, match="config.data.data_dir is empty: set it to the built ovis dataset"):
    tasks.check_data_dir(config, str(tmp_path))
  config.data.data_dir = str(tmp_path / "missing")
  with pytest.raises(ConfigError, match="config.data.data_dir='.*missing' is not a directory"):
    tasks.check_data_dir(config, str(tmp_path))
  config.data.data_dir, config.data.dataset = "", "synthetic"
  tasks.check_data_dir(config, str(tmp_path))
  assert os.listdir(tmp_path) == []                   # nothing generated by the check
