"""O2VIS's config section (`config.tracker`) and the resolution of its switches (SPEC sections 2-3).

The section keeps the name `tracker` (not `o2vis`): every paper config, converted checkpoint and README
command of this project says `config.tracker.*`, and the T_E-only model (`o2vis_te_only`) reads the same
section, since it is O2VIS's T_E with its architecture fields.

`semantics` picks defaults for the single switches that are left at None (REFERENCE.md section 13):

| switch            | 'reference' (default)          | 'paper'                                    |
|-------------------|--------------------------------|--------------------------------------------|
| anchor            | adaptive  (s*M + (1-s)*m)      | adaptive_paper (s*m + (1-s)*M), Eq. 7      |
| current_features  | tracker (T_A self mode on u_t) | segmenter (e_t for OHM, u_t for the anchor)|
| early_matching    | False                          | True (training only, Eq. 9)                |
"""

import dataclasses

import ml_collections

from o2vis_jax import config_validation
from o2vis_jax.association.ops import hungarian as hungarian_lib
from o2vis_jax.association.ops import memory as memory_lib

SECTION = "tracker"
SEMANTICS = ("reference", "paper")
CURRENT_FEATURES = ("tracker", "segmenter")


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      num_layers=3,               # blocks in T_E and in T_A each (in T_E alone for o2vis_te_only).
      ffn_dim=2048,
      num_heads=8,
      semantics="reference",      # reference | paper (REFERENCE.md section 13).
      matcher="host",             # host (scipy via pure_callback) | device (pure JAX, exact).
      # Single switches; None = the value `semantics` implies (table above).
      anchor=ml_collections.FieldReference(None, field_type=str),
      # adaptive | adaptive_paper | current | memory (Table 3(b)).
      current_features=ml_collections.FieldReference(None, field_type=str),  # tracker | segmenter.
      early_matching=ml_collections.FieldReference(None, field_type=bool),
      dtype=ml_collections.FieldReference(None, field_type=str),  # None = follow the inputs.
      param_dtype="float32",
  ))


def tiny(section: ml_collections.ConfigDict) -> None:
  section.ffn_dim = 64
  section.num_heads = 4


@dataclasses.dataclass(frozen=True)
class Options:
  """The resolved switches of the section (static: they select code paths)."""
  anchor: str = "adaptive"
  current_features: str = "tracker"
  early_matching: bool = False
  matcher: str = "host"


def check(name, value, allowed):
  return config_validation.check_choice(f"config.{SECTION}.{name}", value, allowed)


def validate(section, config, early_matching_default: bool = False) -> None:
  """The section's values (after `Method.validate_section`'s field and type checks): the switches as
  `resolve_options` resolves them, the dtypes, the sizes, and C divisible by the heads."""
  from o2vis_jax.defaults import segmenter as segmenter_defaults  # (defaults imports the methods)
  resolve_options(section, early_matching_default)
  path = f"config.{SECTION}"
  for name in ("dtype", "param_dtype"):
    if section.get(name) is not None:
      config_validation.check_choice(f"{path}.{name}", section.get(name), segmenter_defaults.DTYPES)
  config_validation.check_positive(section, path, ("num_layers", "ffn_dim", "num_heads"))
  model = config.get("model") if hasattr(config, "get") else None
  if model is not None and model.get("hidden_dim") and section.get("num_heads"):
    config_validation.check_divisible("config.model.hidden_dim", model.hidden_dim, f"{path}.num_heads",
                                      section.num_heads)


def resolve_options(section, early_matching_default: bool = False) -> Options:
  """Fills the switches left at None from `semantics` (table above). `early_matching_default`: the
  reference value of early_matching (True for the T_E-only model, REFERENCE.md 12)."""
  semantics = check("semantics", section.get("semantics", "reference"), SEMANTICS)
  paper = semantics == "paper"
  pick = lambda name, reference, paper_value: (
      section.get(name) if section.get(name) is not None else (paper_value if paper else reference))
  return Options(
      anchor=check("anchor", pick("anchor", "adaptive", "adaptive_paper"), memory_lib.ANCHORS),
      current_features=check("current_features", pick("current_features", "tracker", "segmenter"),
                             CURRENT_FEATURES),
      early_matching=bool(pick("early_matching", early_matching_default, True)),
      matcher=check("matcher", section.get("matcher", "host"), hungarian_lib.MATCHERS))
