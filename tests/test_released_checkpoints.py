"""Every released checkpoint layout of the Mask2Former family (Mask2Former COCO, LOMM, CAVIS, DVIS++, DVIS-DAQ;
R50 / Swin-L / ViT-L): recognised by its keys, converted, named; the parts of methods not built kept.

The key / shape lists are tests/fixtures/checkpoint_layouts.json, written by scripts/make_checkpoint_layouts.py
from the authors' modules (real sizes, and the same modules at tiny sizes). Detection runs on the real
layouts (zero-stride arrays: shapes only); conversion on random arrays of the tiny layouts.
"""

import json
import os
import pickle

import numpy as np
import pytest

from o2vis_jax import checkpoint_conversion as cc
from o2vis_jax.checkpoint_conversion import released
from o2vis_jax.checkpoint_conversion.errors import ConversionError

LAYOUTS = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "checkpoint_layouts.json")))
CHECKPOINTS = LAYOUTS["checkpoints"]
HEADS = 4   # the tiny layouts' decoder heads (TINY in the script)


def state_dict(name, size, seed=None):
  """The checkpoint's keys with arrays of their shapes: zero-stride zeros (seed None) or random float32."""
  rng = None if seed is None else np.random.default_rng(seed)
  out = {}
  for prefix, component in CHECKPOINTS[name]["parts"]:
    for key, shape in LAYOUTS["components"][size][component].items():
      if key.endswith("num_batches_tracked"):
        out[prefix + key] = np.array(0, np.int64)
      elif key == "laplacian":
        out[prefix + key] = np.array([-1, -1, -1, -1, 8, -1, -1, -1, -1], np.float32).reshape(shape)
      elif key.endswith("relative_position_index"):
        from o2vis_jax.models.backbones import swin
        window = int(round(shape[0] ** 0.5))
        out[prefix + key] = swin.relative_position_index(window).astype(np.int64)
      elif rng is None:
        out[prefix + key] = np.broadcast_to(np.float32(0), shape)
      else:
        out[prefix + key] = rng.normal(size=shape).astype(np.float32)
  return out


EXPECTED_NAMES = {
    "mask2former_coco_r50": "Mask2Former COCO instance R50 (N=100)",
    "mask2former_coco_swinl": "Mask2Former COCO instance Swin-L (N=200)",
    "lomm_segmenter_r50": "MinVIS / LOMM segmenter R50 (N=100, K=40)",
    "lomm_offline_vitl": "LOMM offline ViT-L (DINOv2 + ViT-Adapter) (N=200, K=40)",
    "cavis_segmenter_vitl": "CAVIS segmenter ViT-L (DINOv2 + ViT-Adapter) (N=200, K=40)",
    "cavis_online_swinl": "CAVIS online Swin-L (N=200, K=40)",
    "dvisplus_segmenter_r50_q200": "DVIS++ / DVIS-DAQ segmenter R50 (N=200, K=40)",
    "dvisplus_online_vitl_q100": "DVIS++ online ViT-L (DINOv2 + ViT-Adapter) (N=100, K=40)",
    "dvisplus_offline_r50_q100": "DVIS++ offline R50 (N=100, K=40)",
    "daq_offline_vitl": "DVIS-DAQ offline ViT-L (DINOv2 + ViT-Adapter) (N=200, K=40)",
}
BACKBONES = {"r50": "R50", "swinl": "Swin-L", "vitl": "ViT-L (DINOv2 + ViT-Adapter)"}
FAMILIES = {"mask2former": "Mask2Former", "lomm": "LOMM", "cavis": "CAVIS", "dvisplus": "DVIS++", "daq": "DVIS-DAQ"}


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_every_real_layout_is_recognised(name):
  entry = CHECKPOINTS[name]
  identity = released.identify(state_dict(name, "real"))
  assert identity.method == entry["method"]
  assert identity.stage == entry["stage"]
  assert identity.backbone == BACKBONES[entry["backbone"]]
  assert (identity.num_queries, identity.num_classes) == (entry["queries"], entry["classes"])
  family = FAMILIES[name.split("_")[0]]
  if entry["stage"] == "segmenter" and family in ("LOMM", "DVIS++"):   # their segmenters: MinVIS / CTVIS files
    family = {"LOMM": "MinVIS / LOMM", "DVIS++": "DVIS++ / DVIS-DAQ"}[family]
  assert identity.family == family
  if name in EXPECTED_NAMES:
    assert identity.name == EXPECTED_NAMES[name]


def test_real_layouts_give_the_released_configs():
  """The config read off the real shapes is the released one (R50 / Swin-L 384 / the ViT-L preset)."""
  from o2vis_jax.checkpoint_conversion import backbones as vit_conversion, resnet_swin, segmenter
  sd = state_dict("dvisplus_online_vitl_q200", "real")
  vit = vit_conversion.vit_adapter_config({k[len("backbone."):]: v for k, v in sd.items()
                                           if k.startswith("backbone.")})
  assert (vit.embed_dim, vit.depth, vit.num_heads, vit.deform_num_heads, vit.n_points, vit.conv_inplane) == \
      (1024, 24, 16, 16, 4, 64)
  assert vit.interaction_indexes == ((0, 5), (6, 11), (12, 17), (18, 23)) and vit.pretrain_size == 592
  swin = resnet_swin.backbone_config_from_detectron2(state_dict("cavis_online_swinl", "real"))
  assert (swin.embed_dim, tuple(swin.depths), tuple(swin.num_heads), swin.window_size) == \
      (192, (2, 2, 18, 2), (6, 12, 24, 48), 12)
  m = segmenter.model_config_from_detectron2(state_dict("mask2former_coco_r50", "real"))
  assert (m.backbone.name, m.num_classes, m.num_queries, m.hidden_dim) == ("resnet", 80, 100, 256)
  assert (m.pixel_decoder.num_encoder_layers, m.pixel_decoder.encoder_ffn_dim, m.transformer_decoder.num_layers,
          m.transformer_decoder.ffn_dim) == (6, 1024, 9, 2048)


def _leaf(tree, path):
  for part in path.split("/"):
    tree = tree[part]
  return np.asarray(tree)


# (name, parts converted, unconverted parts: number of arrays)
CONVERSIONS = [
    ("lomm_offline_r50", ["refiner", "segmenter", "tracker"], {}),
    ("cavis_segmenter_r50", ["segmenter", "tracker"], {}),   # the ReID head: tracker/reid_embed
    ("cavis_offline_swinl", ["refiner", "segmenter", "tracker"], {}),
    ("dvisplus_offline_vitl_q200", ["segmenter"], {"dvisplus_tracker": None, "dvisplus_refiner": None,
                                                   "dvisplus_reid": 6}),
    ("daq_offline_r50", ["segmenter", "tracker"], {"daq_refiner": None, "dvisplus_reid": 6}),
]


@pytest.mark.parametrize("name,parts,kept", CONVERSIONS)
def test_tiny_layouts_convert(name, parts, kept):
  sd = state_dict(name, "tiny", seed=1)
  out = released.convert_state_dict(sd, num_heads=HEADS, where=name, vit_config=LAYOUTS["vit_config"]["tiny"])
  assert sorted(out.params) == parts
  assert sorted(out.unconverted) == sorted(kept)
  for part, count in kept.items():
    prefix = {"dvisplus_tracker": "tracker.", "dvisplus_refiner": "refiner.", "daq_refiner": "refiner."}.get(part)
    expected = [k for k in sd if k.startswith(prefix)] if prefix else None
    assert len(out.unconverted[part]) == (count if count is not None else len(expected))
    for key, value in out.unconverted[part].items():
      np.testing.assert_array_equal(value, sd[key])     # the authors' arrays, unchanged
    assert f"kept unconverted: {part}" in out.note_text() and out.notes[part] in out.note_text()
  # Every key is converted or kept: none dropped.
  converted = len(sd) - sum(len(a) for a in out.unconverted.values())
  assert converted > 0
  seg = out.params["segmenter"]
  c = out.config.model
  assert (c.num_queries, c.num_classes, c.hidden_dim) == (8, 5, 32)
  np.testing.assert_array_equal(_leaf(seg, "predictor/query_feat"), sd["sem_seg_head.predictor.query_feat.weight"])
  np.testing.assert_array_equal(_leaf(seg, "predictor/class_embed/kernel"),
                                sd["sem_seg_head.predictor.class_embed.weight"].T)
  backbone = CHECKPOINTS[name]["backbone"]
  assert c.backbone.name == {"r50": "resnet", "swinl": "swin", "vitl": "vit_adapter"}[backbone]
  if backbone == "vitl":
    np.testing.assert_array_equal(_leaf(seg, "backbone/vit_module/pos_embed"), sd["backbone.vit_module.pos_embed"])
    np.testing.assert_array_equal(_leaf(seg, "backbone/spm/stem_0/kernel"),
                                  sd["backbone.spm.stem.0.weight"].transpose(2, 3, 1, 0))
  if "tracker" in out.params:   # (a CAVIS segmenter file: the segmenter stage's tracker of 'cavis')
    assert out.config.association.method == (CHECKPOINTS[name]["method"] or "cavis")


def test_convert_file_and_the_unconverted_parts_on_disk(tmp_path):
  """A DVIS++ online .pkl (detectron2 layout): convert_file gives the segmenter; convert_released names the
  file and keeps the tracker and ReID head, which save_unconverted (what scripts/convert_checkpoint.py calls)
  writes to unconverted.npz with UNCONVERTED.txt."""
  sd = state_dict("dvisplus_online_r50_q100", "tiny", seed=2)
  path = tmp_path / "dvisplus_online.pkl"
  with open(path, "wb") as f:
    pickle.dump({"model": sd}, f)
  config, params = cc.convert_file(str(path), num_heads=HEADS)
  assert sorted(params) == ["segmenter"] and config.model.num_queries == 8
  converted = released.convert_released(str(path), num_heads=HEADS)
  assert converted.describe()[0] == "recognised: DVIS++ online R50 (N=8, K=5)"
  written = released.save_unconverted(str(tmp_path), converted)
  kept = np.load(written)
  tracker_keys = sorted(k for k in sd if k.startswith("tracker."))
  reid_keys = sorted(k for k in sd if k.startswith("sem_seg_head.predictor.reid_embed."))
  assert sorted(kept.files) == sorted(tracker_keys + reid_keys)
  np.testing.assert_array_equal(kept[tracker_keys[0]], sd[tracker_keys[0]])
  note = (tmp_path / released.UNCONVERTED_NOTE).read_text()
  assert "kept unconverted: dvisplus_tracker" in note and "DVIS++ ReferringTracker" in note


def test_unknown_keys_are_listed_by_name():
  sd = state_dict("lomm_segmenter_r50", "tiny", seed=3)
  sd["criterion.empty_weight"] = np.ones(6, np.float32)
  sd["sem_seg_head.predictor.extra.weight"] = np.ones((2, 2), np.float32)
  with pytest.raises(ConversionError, match=r"criterion\.empty_weight"):
    released.convert_state_dict(sd, num_heads=HEADS)
  del sd["criterion.empty_weight"]
  with pytest.raises(ConversionError, match=r"sem_seg_head\.predictor\.extra\.weight"):
    released.convert_state_dict(sd, num_heads=HEADS)
  tracker = state_dict("lomm_segmenter_r50", "tiny", seed=3)
  tracker["tracker.mystery.weight"] = np.ones((2, 2), np.float32)
  with pytest.raises(ConversionError, match="no known tracker"):
    released.identify(tracker)
