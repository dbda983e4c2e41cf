"""The released checkpoints of the Mask2Former family, told apart by their keys, converted and named.

`identify(state_dict)` names a checkpoint from its keys and shapes alone:

  backbone      backbone.stem.* / res2..5 (ResNet), backbone.layers.* (D2SwinTransformer),
                backbone.vit_module.* (ViT-Adapter: DINOv2 ViT-L, or SAM ViT-H without a cls token)
  segmenter     sem_seg_head.predictor.reid_embed.layers.0.weight [R, 2C] or .laplacian -> CAVIS;
                reid_embed [R, C] -> DVIS++ (CTVIS) / DVIS-DAQ; none -> Mask2Former / MinVIS / LOMM
  association   tracker.new_ins_embeds.weight -> DVIS-DAQ; tracker.ctx_query_embed.* -> CAVIS;
                tracker.*_A.* (T_E + T_A) -> LOMM (method 'o2vis'); tracker_E.* -> LOMM T_E only;
                tracker.ref_proj.* without the _A / _E layers -> DVIS++ (ReferringTracker)
  stage         refiner.* -> offline; a tracker -> online; neither -> segmenter

`convert_released(path)` converts what this library runs and keeps the rest as unconverted arrays with a
note (never dropped): the DVIS++ tracker and DVIS++ / DVIS-DAQ refiners (methods not built here), the
segmenter-stage ReID head of DVIS++ (used only to train the segmenter contrastively). A CAVIS online
checkpoint's ReID head is converted with its tracker; a CAVIS segmenter file's head (+ the Laplacian, checked)
becomes the segmenter stage's tracker params['tracker'] = {'reid_embed'} of method 'cavis', from which the
CAVIS tracker stage starts (inference refuses it: `io.segmenter_stage_only`). Keys that belong to no known
part are listed by name in the error. scripts/convert_checkpoint.py writes the unconverted arrays to `unconverted.npz`
(original key names) next to config.json, with `UNCONVERTED.txt` saying what they are.
"""

import dataclasses
import json
import re
from typing import Dict, List, Mapping, Optional

import numpy as np

from o2vis_jax.checkpoint_conversion.errors import ConversionError

REID = "sem_seg_head.predictor.reid_embed."
LAPLACIAN = "sem_seg_head.predictor.laplacian"
TRACKER, REFINER, TE_ONLY = "tracker.", "refiner.", "tracker_E."
SEGMENTER_PREFIXES = ("backbone.", "sem_seg_head.")
COCO_CLASSES = {80: "COCO instance", 133: "COCO panoptic"}
NOTES = {
    "dvisplus_tracker": "DVIS++ ReferringTracker (tracker.*, hidden 2C: query + ReID features): DVIS++ is not an "
                        "association method of o2vis-jax; kept as the authors' arrays",
    "dvisplus_refiner": "DVIS++ TemporalRefiner (refiner.*, hidden 2C, reads the DVIS++ tracker's outputs): not "
                        "built in o2vis-jax; kept as the authors' arrays",
    "daq_refiner": "DVIS-DAQ offline TemporalRefiner (refiner.*): DVIS-DAQ's offline refiner is not built in "
                   "o2vis-jax (its online tracker is, method 'dvis_daq'); kept as the authors' arrays",
    "dvisplus_reid": "DVIS++ / CTVIS segmenter ReID head (sem_seg_head.predictor.reid_embed.*, C -> C): used only "
                     "by the contrastive loss of segmenter training; kept as the authors' arrays",
}
CAVIS_SEGMENTER_STAGE = ("converted: CAVIS segmenter-stage ReID head -> tracker/reid_embed; the CAVIS tracker stage "
                         "starts from it (train.task='tracker', config.init_checkpoint=this directory); inference "
                         "with 'cavis' needs that trained tracker")


@dataclasses.dataclass
class Identity:
  family: str               # 'Mask2Former', 'MinVIS / LOMM', 'LOMM', 'CAVIS', 'DVIS++', 'DVIS-DAQ'
  stage: str                # 'segmenter' | 'online' | 'offline'
  backbone: str             # 'R50', 'ResNet-101', 'Swin-L', 'ViT-L (DINOv2 + ViT-Adapter)', ...
  num_queries: int
  num_classes: int
  method: Optional[str]     # the o2vis-jax association method of its tracker (None: none / not built)
  segmenter_kind: str       # 'plain' | 'dvisplus' | 'cavis'
  tracker_kind: Optional[str]   # 'lomm' | 'lomm_te' | 'cavis' | 'daq' | 'dvisplus' | None

  @property
  def name(self) -> str:
    if self.family == "Mask2Former":
      return f"Mask2Former {COCO_CLASSES.get(self.num_classes, f'{self.num_classes} classes')} {self.backbone}" \
             f" (N={self.num_queries})"
    return f"{self.family} {self.stage} {self.backbone} (N={self.num_queries}, K={self.num_classes})"


def _shape(state_dict, key):
  value = state_dict[key]
  return tuple(getattr(value, "shape", np.shape(value)))


def _backbone_name(state_dict) -> str:
  if "backbone.vit_module.patch_embed.proj.weight" in state_dict:
    dim = _shape(state_dict, "backbone.vit_module.patch_embed.proj.weight")[0]
    depth = len({m.group(1) for k in state_dict for m in [re.match(r"backbone\.vit_module\.blocks\.(\d+)\.", k)] if m})
    sam = "backbone.vit_module.cls_token" not in state_dict
    size = {(1024, 24): "L", (1280, 32): "H", (768, 12): "B", (384, 12): "S", (1536, 40): "g"}.get((dim, depth))
    vit = f"ViT-{size}" if size else f"ViT (dim {dim}, depth {depth})"
    return f"{vit} ({'SAM' if sam else 'DINOv2'} + ViT-Adapter)"
  if "backbone.patch_embed.proj.weight" in state_dict:
    dim = _shape(state_dict, "backbone.patch_embed.proj.weight")[0]
    return {96: "Swin-T/S", 128: "Swin-B", 192: "Swin-L"}.get(dim, f"Swin (embed {dim})")
  if any(k.startswith("backbone.res2.") for k in state_dict):
    blocks = [len({m.group(1) for k in state_dict for m in [re.match(rf"backbone\.res{s}\.(\d+)\.", k)] if m})
              for s in range(2, 6)]
    bottleneck = any(".conv3." in k for k in state_dict if k.startswith("backbone.res2."))
    depth = {(3, 4, 6, 3): 50 if bottleneck else 34, (2, 2, 2, 2): 18, (3, 4, 23, 3): 101}.get(tuple(blocks))
    return f"R{depth}" if depth else f"ResNet {tuple(blocks)}"
  return "no backbone"


def _segmenter_kind(state_dict) -> str:
  key = REID + "layers.0.weight"
  if LAPLACIAN in state_dict:
    return "cavis"
  if key in state_dict:
    hidden = _shape(state_dict, "sem_seg_head.predictor.query_feat.weight")[1] \
        if "sem_seg_head.predictor.query_feat.weight" in state_dict else None
    return "cavis" if hidden is not None and _shape(state_dict, key)[1] == 2 * hidden else "dvisplus"
  return "plain"


def _tracker_kind(state_dict) -> Optional[str]:
  keys = [k for k in state_dict if k.startswith(TRACKER)]
  if not keys:
    return "lomm_te" if any(k.startswith(TE_ONLY) for k in state_dict) else None
  if TRACKER + "new_ins_embeds.weight" in state_dict:
    return "daq"
  if any(k.startswith(TRACKER + "ctx_query_embed.") for k in keys):
    return "cavis"
  if any(re.match(r"tracker\.transformer_\w+_layers_[AE]\.", k) for k in keys):
    return "lomm"
  if any(k.startswith(TRACKER + "ref_proj.") for k in keys):
    return "dvisplus"
  return "unknown"


def identify(state_dict: Mapping) -> Identity:
  """What a detectron2-layout checkpoint is, from its keys and shapes (module docstring)."""
  if not any(k.startswith("sem_seg_head.") for k in state_dict):
    raise ConversionError("not a detectron2 Mask2Former-family checkpoint (no sem_seg_head.* keys); first keys: "
                          f"{sorted(state_dict)[:5]}")
  segmenter_kind = _segmenter_kind(state_dict)
  tracker_kind = _tracker_kind(state_dict)
  if tracker_kind == "unknown":
    raise ConversionError("tracker.* keys of no known tracker (LOMM: *_A / *_E layers; CAVIS: ctx_query_embed; "
                          "DVIS-DAQ: new_ins_embeds; DVIS++: ref_proj); first: "
                          f"{sorted(k for k in state_dict if k.startswith(TRACKER))[:5]}")
  queries, hidden = _shape(state_dict, "sem_seg_head.predictor.query_feat.weight") \
      if "sem_seg_head.predictor.query_feat.weight" in state_dict else (0, 0)
  classes = _shape(state_dict, "sem_seg_head.predictor.class_embed.weight")[0] - 1 \
      if "sem_seg_head.predictor.class_embed.weight" in state_dict else 0
  offline = any(k.startswith(REFINER) for k in state_dict)
  stage = "offline" if offline else ("online" if tracker_kind else "segmenter")
  family, method = {
      None: ({"cavis": "CAVIS", "dvisplus": "DVIS++ / DVIS-DAQ"}.get(segmenter_kind, "MinVIS / LOMM"), None),
      "lomm": ("LOMM", "o2vis"), "lomm_te": ("LOMM (T_E only)", "o2vis_te_only"), "cavis": ("CAVIS", "cavis"),
      "daq": ("DVIS-DAQ", "dvis_daq"), "dvisplus": ("DVIS++", None)}[tracker_kind]
  if tracker_kind is None and segmenter_kind == "plain" and classes in COCO_CLASSES:
    family = "Mask2Former"
  return Identity(family=family, stage=stage, backbone=_backbone_name(state_dict), num_queries=int(queries),
                  num_classes=int(classes), method=method, segmenter_kind=segmenter_kind, tracker_kind=tracker_kind)


@dataclasses.dataclass
class Converted:
  config: object
  params: Dict
  identity: Optional[Identity]
  unconverted: Dict[str, Dict[str, np.ndarray]]   # part -> {original key: array}
  notes: Dict[str, str]                           # part -> what it is and why it is not converted
  converted_notes: List[str] = dataclasses.field(default_factory=list)   # what a converted part is for

  def describe(self) -> List[str]:
    lines = [f"recognised: {self.identity.name}" if self.identity else "recognised: HF layout segmenter"]
    lines.extend(self.converted_notes)
    for part, arrays in self.unconverted.items():
      lines.append(f"kept unconverted: {part} ({len(arrays)} arrays): {self.notes[part]}")
    return lines

  def note_text(self) -> str:
    return "\n".join(self.describe()) + "\n"


def _take(state_dict, predicate):
  taken = {k: v for k, v in state_dict.items() if predicate(k)}
  for k in taken:
    del state_dict[k]
  return taken


def convert_state_dict(state_dict: Mapping, layout: str = "auto", hf_config: Optional[Mapping] = None,
                       num_heads: int = 8, where: str = "checkpoint", vit_config=None) -> Converted:
  """Converts a whole state dict (see `convert_released`)."""
  from o2vis_jax import association, defaults
  from o2vis_jax.checkpoint_conversion import segmenter as segmenter_conversion
  from o2vis_jax.checkpoint_conversion import vit_segmenter
  from o2vis_jax.checkpoint_conversion.refiner import refiner_from_reference
  sd = dict(state_dict)
  if layout not in ("auto", "hf", "detectron2"):
    raise ValueError(f"layout must be 'auto', 'hf' or 'detectron2', got {layout!r}")
  config = defaults.base_config()
  unconverted, notes, converted_notes = {}, {}, []
  segmenter_stage_keys = {}
  identity = None
  if layout != "hf" and any(k.startswith("sem_seg_head.") for k in sd):   # a detectron2-layout checkpoint
    identity = identify(sd)

    def keep(part, arrays):
      if arrays:
        unconverted[part] = {k: np.asarray(getattr(v, "numpy", lambda: v)()) if not isinstance(v, np.ndarray)
                             else v for k, v in arrays.items()}
        notes[part] = NOTES[part]

    # Parts of methods not built here.
    if identity.tracker_kind == "dvisplus":
      keep("dvisplus_tracker", _take(sd, lambda k: k.startswith(TRACKER)))
    if identity.stage == "offline" and identity.tracker_kind in ("dvisplus", "daq"):
      keep(f"{'daq' if identity.tracker_kind == 'daq' else 'dvisplus'}_refiner",
           _take(sd, lambda k: k.startswith(REFINER)))
    if identity.segmenter_kind == "dvisplus":
      keep("dvisplus_reid", _take(sd, lambda k: k.startswith(REID)))
    if identity.segmenter_kind == "cavis" and identity.tracker_kind is None:   # a CAVIS segmenter file
      segmenter_stage_keys = _take(sd, lambda k: k.startswith(REID) or k == LAPLACIAN)

  # The association method: the registered method that claims the rest (its own keys; shared keys stay with
  # the segmenter too).
  from o2vis_jax.checkpoint_conversion import _method_keys
  method_name, method_keys = _method_keys(where, sd)
  shared = association.get(method_name).shared_checkpoint_keys if method_name is not None else ()
  if identity is not None and method_name is not None:
    identity.method = method_name
  refiner_keys = {k: v for k, v in sd.items() if k.startswith(REFINER)}
  segmenter_keys = {k: v for k, v in sd.items()
                    if (k not in method_keys or k in shared) and k not in refiner_keys}
  layout = segmenter_conversion.detect_layout(segmenter_keys) if layout == "auto" else layout
  if layout == "hf":
    if hf_config is None:
      raise ValueError(f"{where} is in the HF layout: its config.json is needed (--hf_config / hf_config_path)")
    model_config, segmenter_params = segmenter_conversion.segmenter_from_hf(segmenter_keys, hf_config)
  else:
    unknown = sorted(k for k in segmenter_keys if not k.startswith(SEGMENTER_PREFIXES))
    if unknown:
      what = identity.name if identity is not None else "detectron2 layout"
      raise ConversionError(f"{where} ({what}): keys of no known part ({len(unknown)}): {unknown}")
    if vit_segmenter.has_vit_backbone(segmenter_keys):
      model_config, segmenter_params = vit_segmenter.segmenter_from_detectron2(
          segmenter_keys, num_heads=num_heads, vit_config=vit_config)
    else:
      model_config, segmenter_params = segmenter_conversion.segmenter_from_detectron2(segmenter_keys,
                                                                                      num_heads=num_heads)
  config.model = model_config
  params = {"segmenter": segmenter_params}
  if segmenter_stage_keys:   # the tracker of CAVIS's segmenter stage: its ReID head alone
    from o2vis_jax.association.cavis import convert as cavis_convert
    method_name, (method_config, method_params) = "cavis", cavis_convert.reid_head_from_reference(
        segmenter_stage_keys, num_heads)
    converted_notes.append(CAVIS_SEGMENTER_STAGE)
  elif method_name is not None:
    method_config, method_params = association.get(method_name).from_reference(method_keys, num_heads)
  if method_name is not None:
    for field in ("hidden_dim", "num_classes"):
      if field in method_config.get("model", {}) and method_config.model[field] != model_config[field]:
        raise ConversionError(f"{where}: the {method_name} weights have {field} {method_config.model[field]}, "
                              f"the segmenter has {model_config[field]}")
    config.association.method = method_name
    section = association.get(method_name).section_name
    association.base.set_section(config, section, association.base.section_of(method_config, section))
    params["tracker"] = method_params
  if refiner_keys:
    refiner_config, refiner_params = refiner_from_reference(refiner_keys, num_heads)
    for field in ("hidden_dim", "num_classes"):
      if refiner_config.model[field] != model_config[field]:
        raise ConversionError(f"{where}: the refiner weights have {field} {refiner_config.model[field]}, "
                              f"the segmenter has {model_config[field]}")
    config.refiner = refiner_config.refiner
    params["refiner"] = refiner_params
  return Converted(config, params, identity, unconverted, notes, converted_notes)


UNCONVERTED_FILE, UNCONVERTED_NOTE = "unconverted.npz", "UNCONVERTED.txt"


def save_unconverted(output_dir: str, converted: Converted) -> Optional[str]:
  """Writes the unconverted parts to `output_dir`/unconverted.npz (the authors' arrays under their key names)
  and UNCONVERTED.txt (what they are); returns the .npz path, or None when there are none."""
  import os
  if not converted.unconverted:
    return None
  path = os.path.join(output_dir, UNCONVERTED_FILE)
  np.savez(path, **{k: v for arrays in converted.unconverted.values() for k, v in arrays.items()})
  with open(os.path.join(output_dir, UNCONVERTED_NOTE), "w") as f:
    f.write(f"{UNCONVERTED_FILE} holds the authors' arrays (original key names) of the parts below, which "
            "o2vis-jax does not run.\n" + converted.note_text())
  return path


def convert_released(path: str, layout: str = "auto", hf_config_path: Optional[str] = None,
                     num_heads: int = 8, vit_config=None) -> Converted:
  """A released checkpoint file -> `Converted` (config, params {'segmenter', ['tracker'], ['refiner']},
  what it is, the unconverted parts with their notes). `vit_config`: the `config` argument of
  `backbone_from_detectron2` for a ViT-Adapter backbone (None: the authors' preset, sizes from the shapes)."""
  from o2vis_jax.checkpoint_conversion.io import load_state_dict
  state_dict = load_state_dict(path)
  hf_config = None
  if hf_config_path:
    with open(hf_config_path) as f:
      hf_config = json.load(f)
  return convert_state_dict(state_dict, layout, hf_config, num_heads, where=path, vit_config=vit_config)
