"""Loss weights and options: `LossConfig`, the one place their defaults are written, and the experiment
config's `loss` section built from it (REFERENCE.md section 10; SPEC sections 5, 6)."""

import dataclasses

import ml_collections

RULES = ("reference", "paper")

# The fields of LossConfig that the experiment config's `loss` section carries. The rules and the matcher
# are not among them: they belong to an association method's section, which passes them as defaults.
CONFIG_FIELDS = ("class_weight", "mask_weight", "dice_weight", "no_object_weight", "sim_weight",
                 "contrastive_weight", "num_points", "oversample_ratio", "importance_sample_ratio")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Loss weights and options (REFERENCE.md section 10; SPEC sections 5, 6). The class, mask and dice
  weights also weight the matching cost (`assignment.CostWeights`)."""
  class_weight: float = 2.0
  mask_weight: float = 5.0
  dice_weight: float = 5.0
  no_object_weight: float = 0.1
  sim_weight: float = 1.0          # L_sim, Eq. 11 (the trackers).
  contrastive_weight: float = 1.0  # Eq. 13 (segmenter training only).
  num_points: int = 12544
  oversample_ratio: float = 3.0
  importance_sample_ratio: float = 0.75
  target_rule: str = "reference"   # T_E's modified targets: reference (REFERENCE.md 7.3) | paper (Eq. 10).
  sim_rule: str = "reference"      # L_sim: reference (REFERENCE.md 7.3) | paper (Eq. 11).
  matcher: str = "host"            # association.ops.hungarian: host | device.

  def __post_init__(self):
    for field in ("target_rule", "sim_rule"):
      if getattr(self, field) not in RULES:
        raise ValueError(f"LossConfig.{field} must be one of {RULES}, got {getattr(self, field)!r}")

  def weight_of(self, name: str) -> float:
    """The weight of a named term: loss_ce* / loss_mask* / loss_dice* / loss_sim / loss_contrastive."""
    for prefix, weight in (("loss_ce", self.class_weight), ("loss_mask", self.mask_weight),
                           ("loss_dice", self.dice_weight), ("loss_sim", self.sim_weight),
                           ("loss_contrastive", self.contrastive_weight)):
      if name.startswith(prefix):
        return weight
    raise KeyError(f"losses: no weight for term {name!r}")


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(LossConfig))


def loss_config_from(config, **defaults) -> LossConfig:
  """LossConfig from an experiment config: `defaults` (LossConfig fields chosen by the caller, e.g. an
  association method's target_rule / sim_rule / matcher), overridden by the fields of `config.loss` that
  are LossConfig fields, when that section exists."""
  unknown = sorted(set(defaults) - _FIELD_NAMES)
  if unknown:
    raise TypeError(f"losses.loss_config_from: {unknown} are not LossConfig fields "
                    f"(fields: {sorted(_FIELD_NAMES)})")
  fields = dict(defaults)
  loss = config.get("loss", None) if hasattr(config, "get") else None
  if loss is not None:
    fields.update({k: v for k, v in loss.items() if k in _FIELD_NAMES})
  return LossConfig(**fields)


def default_config() -> ml_collections.ConfigDict:
  """The experiment config's `loss` section: the LossConfig defaults of `CONFIG_FIELDS`."""
  defaults = LossConfig()
  return ml_collections.ConfigDict({name: getattr(defaults, name) for name in CONFIG_FIELDS})


def tiny(config: ml_collections.ConfigDict) -> None:
  """Shrinks `config.loss` in place for unit tests."""
  config.loss.num_points = 64
