"""CAVIS's config section, `config.association.cavis` (shared/reference/cavis.md; the authors' configs:
MODEL.MASK_FORMER.{REID_HIDDEN_DIM, NUM_REID_HEAD_LAYERS, CONTEXT_FILTER_SIZE}, MODEL.TRACKER.*, USE_CL)."""

import ml_collections

from o2vis_jax import config_validation
from o2vis_jax.association.ops import hungarian as hungarian_lib

SECTION = "association.cavis"
PHASES = ("segmenter_guided", "main")


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      num_layers=6,                 # CAIT blocks (MODEL.TRACKER.DECODER_LAYERS).
      ffn_dim=2048,
      num_heads=8,
      reid_hidden_dim=256,          # the ReID head: MLP_L (2C -> hidden -> ... -> C).
      num_reid_head_layers=3,
      context_filter_size=9,        # k of the k x k context box filter (9 in every CAVIS config).
      matcher="host",               # host (scipy via pure_callback) | device (pure JAX, exact).
      # Tracker training (CAVIS_online): segmenter-guided matching for the first `segmenter_guided_fraction`
      # of the steps (the reference: MAX_ITER / 2), the reference-query contrastive loss (USE_CL: True for
      # the YouTube-VIS configs, False for OVIS) with weight `reid_weight` (loss_reid and loss_reid_aux).
      segmenter_guided_fraction=0.5,
      reference_contrastive=True,
      reid_weight=2.0,
      # Segmenter stage (CAVIS_segmenter, config.train.task='segmenter'): L_CTX and L_PCC next to the
      # per-frame Mask2Former losses, each term and its `_aux` with these weights (A:516-535).
      ctx_weight=2.0,
      proto_weight=2.0,
      dtype=ml_collections.FieldReference(None, field_type=str),  # None = follow the inputs.
      param_dtype="float32",
  ))


def tiny(section: ml_collections.ConfigDict) -> None:
  section.num_layers = 3
  section.ffn_dim = 64
  section.num_heads = 4
  section.reid_hidden_dim = 32


def validate(section, config) -> None:
  """The section's values (after `Method.validate_section`'s field and type checks)."""
  from o2vis_jax.defaults import segmenter as segmenter_defaults  # (defaults imports the methods)
  path = "config." + SECTION
  config_validation.check_choice(f"{path}.matcher", section.get("matcher", "host"), hungarian_lib.MATCHERS)
  for name in ("dtype", "param_dtype"):
    if section.get(name) is not None:
      config_validation.check_choice(f"{path}.{name}", section.get(name), segmenter_defaults.DTYPES)
  config_validation.check_positive(section, path, ("num_layers", "ffn_dim", "num_heads", "reid_hidden_dim",
                                                   "num_reid_head_layers", "context_filter_size"))
  size = section.get("context_filter_size")
  if size is not None and size % 2 == 0:
    raise config_validation.ConfigError(f"{path}.context_filter_size={size}: must be odd (the authors pad "
                                        "by (k - 1) / 2 on each side)")
  config_validation.check_positive(section, path, ("reid_weight", "ctx_weight", "proto_weight"), minimum=0)
  fraction = section.get("segmenter_guided_fraction")
  if fraction is not None and not 0.0 <= fraction <= 1.0:
    raise config_validation.ConfigError(f"{path}.segmenter_guided_fraction={fraction}: must be in [0, 1]")
  model = config.get("model") if hasattr(config, "get") else None
  if model is not None and model.get("hidden_dim") and section.get("num_heads"):
    config_validation.check_divisible("config.model.hidden_dim", model.hidden_dim, f"{path}.num_heads",
                                      section.num_heads)
