"""The experiment config validated as a whole, right after it is parsed (a config file with its
`--config.*` overrides, or a checkpoint's `config.json`), so that a bad value fails in one line before
any expensive work instead of hours later inside the segmenter stage, the data pipeline or flax.

`validate(config)` runs one function per section (model, data, train, loss, inference, refiner,
association, the top-level fields) and, for each association method's section present, that method's
`Method.validate_section` (its default compares the section against the method's `default_config()`).
Every check raises `ConfigError`, one line naming the field:
  - an unknown field, with the nearest known name (a misspelling: `config.trian`);
  - a type that is not the library default's: ints, floats (an int is accepted), bools, strings,
    sequences of a fixed length (pairs such as `data.synthetic_radius_range`) or of any length
    (`VARIABLE_LENGTH`), fields left at None typed by their `FieldReference`;
  - a value outside its allowed set (`config.tracker.matcher must be one of ('host', 'device'), got
    'gpu'`) or range. The allowed sets live next to the code that reads them (the backbone's depths and
    norms, the association registry, the o2vis switches, `losses.LossConfig`, `defaults/*.py` tables);
    this module only calls them.
Missing fields and sections are not errors: every reader falls back on the default (configs written
by older versions lack fields added since).
"""

import difflib
import numbers
from typing import Any, Iterable, Optional, Sequence

from o2vis_jax.cli import InputError


class ConfigError(InputError):
  """A config field with a wrong type, a value outside its allowed set, or an unknown name."""


# Sequences whose length is free (the default's length is only an example); every other sequence
# field must have its default's length (pairs, RGB triples).
VARIABLE_LENGTH = frozenset({"config.train.decay_steps", "config.train.segmenter_decay_steps",
                             "config.data.pad_buckets", "config.model.backbone.interaction_indexes",
                             "config.model.backbone.global_attn_indexes"})


# ------------------------------------------------------------------------------------- the helpers
def check_choice(path: str, value: Any, allowed: Sequence[Any]) -> Any:
  """`value` if it is one of `allowed`; else ConfigError naming the field and listing the choices."""
  if value not in tuple(allowed):
    raise ConfigError(f"{path} must be one of {tuple(allowed)}, got {value!r}")
  return value


def check_range(path: str, value: Any, low: Optional[float] = None, high: Optional[float] = None,
                low_open: bool = False) -> Any:
  """`low <= value <= high` (`low < value` with low_open); either bound may be None."""
  too_low = low is not None and (value <= low if low_open else value < low)
  if too_low or (high is not None and value > high):
    lower = "" if low is None else f"{'>' if low_open else '>='} {low}"
    upper = "" if high is None else f"<= {high}"
    raise ConfigError(f"{path}={value!r} must be {' and '.join(b for b in (lower, upper) if b)}")
  return value


def check_positive(section, path: str, names: Iterable[str], minimum: int = 1) -> None:
  """Each present field of `names` in `section` is at least `minimum`."""
  for name in names:
    if section.get(name) is not None:
      check_range(f"{path}.{name}", section.get(name), minimum)


def check_divisible(path: str, value: int, by_path: str, by: int) -> None:
  if by and value % by:
    raise ConfigError(f"{path}={value} must be divisible by {by_path}={by}")


def nearest(name: str, known: Iterable[str]) -> Optional[str]:
  matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
  return matches[0] if matches else None


def unknown_field(path: str, name: str, known: Iterable[str]) -> ConfigError:
  known = sorted(known)
  guess = nearest(name, known)
  hint = f"did you mean {path}.{guess}?" if guess else f"known: {', '.join(known)}"
  return ConfigError(f"{path}.{name} is not a config field; {hint}")


def _is_section(value) -> bool:
  import ml_collections
  return isinstance(value, (ml_collections.ConfigDict, dict))


def _keys(section):
  return list(section.keys())


def _type_of_reference(reference, name: str):
  """The type a field must have: its default's, or for a field left at None the type its
  FieldReference declares (None when the default gives none: the field is not type-checked)."""
  import ml_collections
  value = reference[name]
  if value is not None:
    return type(value)
  if isinstance(reference, ml_collections.ConfigDict):
    field_type = reference.get_type(name)
    if field_type not in (type(None), None):
      return field_type
  return None


def _describe(kind) -> str:
  return {bool: "a bool (true / false)", int: "an int", float: "a number (float or int)",
          str: "a string"}.get(kind, f"a {getattr(kind, '__name__', kind)}")


def _check_scalar(path: str, value, kind) -> None:
  import numpy as np
  if kind is bool:
    ok = isinstance(value, (bool, np.bool_))
  elif kind is int:
    ok = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
  elif kind is float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
  else:
    ok = isinstance(value, kind)
  if not ok:
    raise ConfigError(f"{path}={value!r} must be {_describe(kind)} (got {type(value).__name__})")


def _check_sequence(path: str, value, default) -> None:
  fixed = path not in VARIABLE_LENGTH
  if not isinstance(value, (list, tuple)):
    count = len(default) if fixed else "any number of"
    raise ConfigError(f"{path}={value!r} must be a list of {count} values like the default "
                      f"{_plain(default)} (got {type(value).__name__})")
  if fixed and len(value) != len(default):
    raise ConfigError(f"{path}={_plain(value)} must have {len(default)} entries like the default "
                      f"{_plain(default)}")
  if not default:
    return
  for index, item in enumerate(value):
    item_default = default[index] if fixed else default[0]
    check_value(f"{path}[{index}]", item, item_default, type(item_default))


def _plain(value):
  """Tuples and lists printed alike (a config from JSON holds lists where the defaults hold tuples)."""
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  return value


def _nullable(reference, name: str) -> bool:
  """The default is a `FieldReference` (declared with a type), which may hold None whatever its value."""
  import ml_collections
  fields = getattr(reference, "_fields", None) if isinstance(reference, ml_collections.ConfigDict) else None
  return isinstance(fields, dict) and isinstance(fields.get(name), ml_collections.FieldReference)


def check_value(path: str, value, default, kind, nullable: bool = False) -> None:
  """`value` has the type of `default` (`kind` for a default of None; None = not checked); None is
  accepted where the default is None or `nullable` (a FieldReference field, e.g. `refiner.attention_block`)."""
  if _is_section(default):
    check_fields(path, value, default)
  elif value is None:
    if default is not None and not nullable:
      raise ConfigError(f"{path}=None must be {_describe(kind)} like the default {_plain(default)!r}")
  elif isinstance(default, (list, tuple)):
    _check_sequence(path, value, default)
  elif kind is not None:
    _check_scalar(path, value, kind)


def check_fields(path: str, section, reference) -> None:
  """Every field of `section` is a field of `reference` (the defaults) and has its type; nested
  sections are checked the same way. Fields of `reference` that `section` lacks are allowed."""
  if not _is_section(section):
    raise ConfigError(f"{path}={section!r} must be a section (a dict of fields like "
                      f"{', '.join(sorted(_keys(reference)))})")
  known = set(_keys(reference))
  for name in _keys(section):
    if name not in known:
      raise unknown_field(path, name, known)
    check_value(f"{path}.{name}", section[name], reference[name], _type_of_reference(reference, name),
                _nullable(reference, name))


# ---------------------------------------------------------------------------------- the sections
def _model(model) -> None:
  from o2vis_jax.defaults import segmenter as defaults
  from o2vis_jax.models import backbones
  from o2vis_jax.models.backbones import resnet
  path = "config.model"
  for name in ("dtype", "param_dtype"):
    if model.get(name) is not None:
      check_choice(f"{path}.{name}", model.get(name), defaults.DTYPES)
  check_positive(model, path, ("num_classes", "num_queries", "hidden_dim", "num_heads"))
  if model.get("hidden_dim") and model.get("num_heads"):
    check_divisible(f"{path}.hidden_dim", model.hidden_dim, f"{path}.num_heads", model.num_heads)
  for name in ("pixel_std",):
    for index, value in enumerate(model.get(name) or ()):
      check_range(f"{path}.{name}[{index}]", value, 0, low_open=True)
  backbone = model.get("backbone")
  if backbone is not None:
    bpath = f"{path}.backbone"
    if backbone.get("name") is not None:
      check_choice(f"{bpath}.name", backbone.name, backbones.names())
    if backbone.get("depth") is not None and backbone.get("name", "resnet") == "resnet":
      check_choice(f"{bpath}.depth", backbone.depth, resnet.DEPTHS)
    if backbone.get("name", "resnet") in backbones.names():
      try:   # each backbone's own checks (models/backbones/<name>.py: check_config)
        backbones.check_config(backbone, bpath)
      except ValueError as error:
        raise ConfigError(str(error)) from None
    if backbone.get("norm") is not None:
      check_choice(f"{bpath}.norm", backbone.norm, resnet.NORMS)
    check_positive(backbone, bpath, ("width", "norm_groups"))
    if backbone.get("norm_eps") is not None:
      check_range(f"{bpath}.norm_eps", backbone.norm_eps, 0, low_open=True)
    if backbone.get("norm") == "group_norm" and backbone.get("width") and backbone.get("norm_groups"):
      check_divisible(f"{bpath}.width", backbone.width, f"{bpath}.norm_groups", backbone.norm_groups)
  decoder = model.get("pixel_decoder")
  if decoder is not None:
    dpath = f"{path}.pixel_decoder"
    check_positive(decoder, dpath, ("conv_dim", "mask_dim", "encoder_ffn_dim", "num_heads", "num_points",
                                    "num_groups"))
    check_positive(decoder, dpath, ("num_encoder_layers",), minimum=0)
    if decoder.get("conv_dim"):
      for name in ("num_heads", "num_groups"):
        if decoder.get(name):
          check_divisible(f"{dpath}.conv_dim", decoder.conv_dim, f"{dpath}.{name}", decoder[name])
  transformer = model.get("transformer_decoder")
  if transformer is not None:
    check_positive(transformer, f"{path}.transformer_decoder", ("num_layers", "ffn_dim"))


def _data(data) -> None:
  from o2vis_jax.defaults import data as defaults
  path = "config.data"
  if data.get("dataset") is not None:
    check_choice(f"{path}.dataset", data.dataset, defaults.DATASETS)
  check_positive(data, path, ("num_frames", "min_size_train_step", "max_size_train", "crop_min", "crop_max",
                              "max_instances", "synthetic_videos", "synthetic_frames"))
  check_positive(data, path, ("sampling_frame_range", "holdout_videos", "prefetch", "num_workers",
                              "synthetic_valid_videos", "coco_ratio"), minimum=0)
  check_positive(data, path, ("read_threads",))
  if data.get("synthetic_size") is not None:
    # datasets.synthetic.generate's own limit: smaller frames cannot hold its occluders and shapes.
    check_range(f"{path}.synthetic_size", data.synthetic_size, 16)
  for name in ("flip_prob", "reverse_prob"):
    if data.get(name) is not None:
      check_range(f"{path}.{name}", data[name], 0.0, 1.0)
  sizes = data.get("min_size_train")
  if sizes is not None:
    check_range(f"{path}.min_size_train[0]", sizes[0], 1)
    if sizes[0] > sizes[1]:
      raise ConfigError(f"{path}.min_size_train={_plain(sizes)} must be (min, max) with min <= max")
  crop_min, crop_max = data.get("crop_min"), data.get("crop_max")
  if crop_min is not None and crop_max is not None and crop_min > crop_max:
    raise ConfigError(f"{path}.crop_min={crop_min} must be <= {path}.crop_max={crop_max}")
  radius = data.get("synthetic_radius_range")
  if radius is not None and not 0.0 < radius[0] <= radius[1] <= 0.5:
    # The bounds datasets.synthetic.generate enforces (a radius is a fraction of the frame size).
    raise ConfigError(f"{path}.synthetic_radius_range={_plain(radius)} must be (min, max) with "
                      "0 < min <= max <= 0.5 (object radius / frame size)")
  if data.get("synthetic_appearance") is not None:
    from o2vis_jax.datasets import synthetic  # pylint: disable=g-import-not-at-top  (numpy + PIL only)
    check_choice(f"{path}.synthetic_appearance", data.synthetic_appearance, synthetic.APPEARANCES)
  buckets = data.get("pad_buckets")
  if buckets is not None:
    if not buckets:
      raise ConfigError(f"{path}.pad_buckets is empty: give at least one (height, width)")
    for index, bucket in enumerate(buckets):
      if any(size <= 0 or size % 32 for size in bucket):
        raise ConfigError(f"{path}.pad_buckets[{index}]={_plain(bucket)}: sizes must be positive multiples "
                          "of 32 (the segmenter's stride)")


def _train(train) -> None:
  from o2vis_jax.defaults import train as defaults
  path = "config.train"
  if train.get("task") is not None:
    check_choice(f"{path}.task", train.task, defaults.TASKS)
  for name in ("learning_rate", "segmenter_learning_rate", "weight_decay", "backbone_lr_multiplier",
               "warmup_steps", "warmup_factor"):
    if train.get(name) is not None:
      check_range(f"{path}.{name}", train[name], 0)
  for name in ("decay_factor", "clip_grad_norm", "adam_eps"):
    if train.get(name) is not None:
      check_range(f"{path}.{name}", train[name], 0, low_open=True)
  for name in ("early_training_fraction", "refiner_matching_switch"):
    if train.get(name) is not None:
      check_range(f"{path}.{name}", train[name], 0.0, 1.0)
  check_positive(train, path, ("segmenter_steps",))
  for name in ("decay_steps", "segmenter_decay_steps"):
    steps = list(train.get(name) or ())
    for index, step in enumerate(steps):
      check_range(f"{path}.{name}[{index}]", step, 0)
    if steps != sorted(steps):
      raise ConfigError(f"{path}.{name}={_plain(steps)} must be in increasing order")


def _loss(config) -> None:
  from o2vis_jax import losses
  path = "config.loss"
  loss = config.loss
  try:
    losses.loss_config_from(config)   # LossConfig's own checks (__post_init__)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{path}: {e}") from e
  for name in ("class_weight", "mask_weight", "dice_weight", "no_object_weight", "sim_weight",
               "contrastive_weight"):
    if loss.get(name) is not None:
      check_range(f"{path}.{name}", loss[name], 0)
  check_positive(loss, path, ("num_points",))
  if loss.get("oversample_ratio") is not None:
    check_range(f"{path}.oversample_ratio", loss.oversample_ratio, 1.0)
  if loss.get("importance_sample_ratio") is not None:
    check_range(f"{path}.importance_sample_ratio", loss.importance_sample_ratio, 0.0, 1.0)


def _inference(inference) -> None:
  path = "config.inference"
  check_positive(inference, path, ("chunk_size", "min_size_test", "max_num", "size_divisibility"))
  divisibility = inference.get("size_divisibility")
  if divisibility and divisibility % 32:
    # Test images are padded to a multiple of it, and the segmenter needs multiples of 32.
    raise ConfigError(f"{path}.size_divisibility={divisibility} must be a multiple of 32 (the segmenter's "
                      "stride)")


def _refiner(config) -> None:
  """The offline temporal refiner's section: its own checks (`o2vis_jax.refiner.validate`)."""
  from o2vis_jax import refiner
  refiner.validate(config.refiner, config)


def _top_level(config) -> None:
  check_positive(config, "config", ("batch_size", "checkpoint_every_steps", "log_every_steps"))
  check_positive(config, "config", ("num_train_steps", "seed"), minimum=0)


def _association(config) -> None:
  """`association.method` is a registered method; each method's section present is checked by its
  method (the selected method for a section several methods share)."""
  from o2vis_jax import association
  name = association.method_name(config)
  known = association.names()
  if name not in known:
    guess = nearest(str(name), known)
    hint = f"did you mean {guess!r}? " if guess else ""
    raise ConfigError(f"config.association.method={name!r} is not a registered association method; "
                      f"{hint}known: {', '.join(known)}")
  selected = association.get(name)
  owners = {}
  for method in [selected] + [association.get(n) for n in known]:
    owners.setdefault(method.section_name, method)
  for section_name, method in owners.items():
    section = association.base.section_of(config, section_name)
    if section is not None:
      method.validate_section(section, config)


_SECTIONS = {"model": lambda config: _model(config.model), "data": lambda config: _data(config.data),
             "train": lambda config: _train(config.train), "loss": _loss,
             "inference": lambda config: _inference(config.inference), "refiner": _refiner}


def validate(config, training: bool = False):
  """Checks every section of `config` (module docstring); returns it. Raises ConfigError naming the
  field. `training=True` adds what only a training run needs (a trainable method for the tracker stage)."""
  from o2vis_jax import association, defaults
  if not _is_section(config):
    raise ConfigError(f"config must be a dict of sections, got {type(config).__name__}")
  reference = defaults.base_config()
  _backbone_reference(config, reference)
  method_sections = {association.get(n).section_name for n in association.names()}
  for name in _keys(config):
    if name not in reference:
      raise unknown_field("config", name, _keys(reference))
    if name not in method_sections:   # the methods check their own sections (`_association`)
      check_value(f"config.{name}", config[name], reference[name], _type_of_reference(reference, name))
  for name, check in _SECTIONS.items():
    if config.get(name) is not None:
      check(config)
  _top_level(config)
  _association(config)
  if training:
    _training(config)
  return config


def _backbone_reference(config, reference) -> None:
  """Each backbone has its own fields: `config.model.backbone` is checked against the default section of
  the backbone it names (models/backbones `default_config`)."""
  from o2vis_jax.models import backbones
  model = config.get("model") if _is_section(config) else None
  backbone = model.get("backbone") if _is_section(model) else None
  kind = backbone.get("name") if _is_section(backbone) else None
  if kind in backbones.names() and kind != reference.model.backbone.name:
    reference.model.backbone = backbones.default_config(kind)


def _training(config) -> None:
  from o2vis_jax import association
  task = config.get("train", {}).get("task", "tracker")
  method = association.method_of(config)
  if task in ("tracker", "segmenter+tracker") and not method.trainable:
    trainable = [n for n in association.names() if association.get(n).trainable]
    raise ConfigError(f"config.train.task={task!r} trains the association method, but "
                      f"config.association.method={method.name!r} is training-free (nothing to train); "
                      f"choose one of {trainable}, or config.train.task='segmenter'")
  if config.get("train", {}).get("freeze_segmenter", False) and task in ("segmenter", "segmenter+tracker"):
    if not method.segmenter_stage_params:
      raise ConfigError(f"config.train.freeze_segmenter=True: the segmenter stage would train nothing, "
                        f"config.association.method={method.name!r} has no segmenter-stage params "
                        "(e.g. 'cavis' has its ReID head)")
    if not config.get("init_checkpoint", ""):
      raise ConfigError("config.train.freeze_segmenter=True needs config.init_checkpoint: the trained "
                        "segmenter to keep fixed")
