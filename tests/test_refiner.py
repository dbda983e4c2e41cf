"""The offline temporal refiner (o2vis_jax/refiner.py, models/refiner.py, checkpoint_conversion/refiner.py)
against the AUTHORS' module: tests/fixtures/refiner_reference.npz, written by scripts/make_refiner_fixtures.py
from LOMM's `lomm/refiner.py` (float64, C=16, 4 heads, FFN 24, K+1=5, L=3, N=4, N_seg=5, masks 6x5)."""

import copy
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import segmenter_fixture
from o2vis_jax import checkpoint_conversion as cc
from o2vis_jax import config_validation, refiner
from o2vis_jax.checkpoint_conversion import refiner as refiner_conversion
from o2vis_jax.models import refiner as refiner_model

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "refiner_reference.npz")
HEADS, LAYERS = 4, 3


@pytest.fixture(scope="module")
def reference():
  with np.load(FIXTURE) as archive:
    return {k: archive[k] for k in archive.files}


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def state_dict(reference):
  return {k[len("state/"):]: v for k, v in reference.items() if k.startswith("state/")}


def inputs(reference, t, dtype=np.float64):
  """The fixture's inputs in this library's layout: [T, N, C], [T, N_seg, C], [T, h, w, C]."""
  return (jnp.asarray(reference[f"T{t}/instance_embeds"][0].transpose(1, 2, 0), dtype),
          jnp.asarray(reference[f"T{t}/frame_embeds"][0].transpose(1, 2, 0), dtype),
          jnp.asarray(reference[f"T{t}/mask_features"][0].transpose(0, 2, 3, 1), dtype))


def expected(reference, t, prefix=""):
  """(logits [T, N, K+1] (the authors repeat the video-level row T times), masks [T, N, h, w])."""
  return (reference[f"T{t}/{prefix}pred_logits"][0],
          reference[f"T{t}/{prefix}pred_masks"][0].transpose(1, 0, 2, 3))


def assert_close(actual, want, rtol, what):
  """max |actual - want| <= rtol * max |want| (relative to the array's scale)."""
  actual = np.broadcast_to(np.asarray(actual, np.float64), want.shape)
  error = np.max(np.abs(actual - want)) / np.max(np.abs(want))
  assert error <= rtol, f"{what}: relative error {error:.3g}, expected <= {rtol:g}"


def run(config, params, args, train):
  return jax.jit(lambda p, *a: refiner.refine(config, p, *a, train=train))(params, *args)


def converted(reference, attention_block=None, frame_chunk=None, slot_chunk=None):
  config, params = cc.refiner_from_reference(state_dict(reference), HEADS)
  config.refiner.attention_block = attention_block
  config.refiner.frame_chunk = frame_chunk
  config.refiner.slot_chunk = slot_chunk
  return config, params


@pytest.mark.parametrize("t", [1, 7, 40])
def test_matches_authors_module_in_training_mode(x64, reference, t):
  assert bytes(reference["source/commit"]).decode() == "76e60a4b27c0b4afee48ea18d2e64b2fb0a66951"
  config, params = converted(reference)
  out = run(config, params, inputs(reference, t), train=True)
  assert out["pred_logits"].dtype == jnp.float64 and out["pred_masks"].shape == (t, 4, 6, 5)
  logits, masks = expected(reference, t)
  assert_close(out["pred_logits"], logits, 1e-6, f"T={t} last-layer logits")
  assert_close(out["pred_masks"], masks, 1e-6, f"T={t} last-layer masks")
  assert len(out["aux_outputs"]) == LAYERS - 1
  for layer, aux in enumerate(out["aux_outputs"]):
    logits, masks = expected(reference, t, f"aux{layer}/")
    assert_close(aux["pred_logits"], logits, 1e-6, f"T={t} layer {layer} logits")
    assert_close(aux["pred_masks"], masks, 1e-6, f"T={t} layer {layer} masks")


@pytest.mark.parametrize("frame_chunk,slot_chunk", [(None, None), (6, 3)])
def test_blockwise_refiner_matches_authors_module(x64, reference, frame_chunk, slot_chunk):
  # 40 frames in blocks of 16: the last block holds 8 real frames and 8 masked ones; per-frame steps in
  # chunks of 6 frames: the last chunk holds 4 real frames and 2 zero frames; the temporal steps for 3
  # slots at a time (N = 4: one real and two zero slots in the last chunk).
  config, params = converted(reference, attention_block=16, frame_chunk=frame_chunk, slot_chunk=slot_chunk)
  out = run(config, params, inputs(reference, 40), train=True)
  for layer, layer_out in enumerate(out["aux_outputs"] + [out]):
    prefix = "" if layer == LAYERS - 1 else f"aux{layer}/"
    logits, masks = expected(reference, 40, prefix)
    assert_close(layer_out["pred_logits"], logits, 1e-6, f"blockwise layer {layer} logits")
    assert_close(layer_out["pred_masks"], masks, 1e-6, f"blockwise layer {layer} masks")


def test_frame_chunks_equal_all_frames_at_once(x64, reference):
  """run_layers with the per-frame steps in chunks of frames (a divisor of T, a non-divisor, one longer
  than T) and the temporal steps in chunks of slots equals layer_outputs over everything at once, to
  float64 round-off."""
  config, params = converted(reference)
  instance_embeds, frame_embeds, _ = inputs(reference, 40)
  model = refiner.build(config, **refiner.sizes_of(params))
  want = model.apply({"params": params}, instance_embeds, frame_embeds,
                     method=refiner_model.TemporalRefiner.layer_outputs)
  for chunk, slots in ((8, None), (7, 1), (64, 3), (None, 2)):
    got = refiner_model.run_layers(model, params, instance_embeds, frame_embeds, frame_chunk=chunk,
                                   slot_chunk=slots)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=f"frame_chunk={chunk} slots={slots}")
  last = refiner_model.run_layers(model, params, instance_embeds, frame_embeds, frame_chunk=7, last_only=True)
  np.testing.assert_allclose(last, want[-1:], rtol=0, atol=1e-12, err_msg="last_only")


def plain_attention(q, k, v):
  weights = jax.nn.softmax(jnp.einsum("...qhd,...khd->...hqk", q, k), axis=-1)
  return jnp.einsum("...hqk,...khd->...qhd", weights, v)


@pytest.mark.parametrize("t,block", [(40, 3), (40, 8), (13, 5), (7, 8), (1, 4), (6, 1)])
def test_blockwise_attention_equals_softmax_attention(x64, t, block):
  rng = np.random.default_rng(t * 100 + block)
  q, k, v = (jnp.asarray(rng.normal(size=(3, t, 2, 4)) * 2.0) for _ in range(3))
  got = refiner_model.blockwise_attention(q, k, v, block)
  np.testing.assert_allclose(got, plain_attention(q, k, v), rtol=1e-12, atol=1e-12,
                             err_msg=f"T={t} block={block}")


def test_blockwise_attention_gradient_equals_softmax_gradient(x64):
  rng = np.random.default_rng(5)
  q, k, v, w = (jnp.asarray(rng.normal(size=(2, 11, 2, 3))) for _ in range(4))
  loss = lambda attention: lambda q, k, v: jnp.sum(attention(q, k, v) * w)
  want = jax.grad(loss(plain_attention), argnums=(0, 1, 2))(q, k, v)
  blockwise = lambda q, k, v: refiner_model.blockwise_attention(q, k, v, 4)
  got = jax.grad(loss(blockwise), argnums=(0, 1, 2))(q, k, v)
  for name, g, e in zip("qkv", got, want):
    np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12, err_msg=f"d loss / d {name}")


def test_eval_mode_matches_authors_eval_mode_and_chunked_masks(x64, reference):
  """Eval mode (the authors' windows_prediction, cast to float32): last layer only; `refine` equals
  `refine_queries` + `masks_from_embeddings` chunk by chunk (windows of 3 frames, 7 = 3 + 3 + 1)."""
  config, params = converted(reference)
  args = inputs(reference, 7)
  # One program for both (its compile dominates the test's time).
  out, queries = jax.jit(lambda p, a, b, c: (refiner.refine(config, p, a, b, c),
                                             refiner.refine_queries(config, p, a, b)))(params, *args)
  assert out["aux_outputs"] == []
  logits, masks = expected(reference, 7, "eval/")
  assert_close(out["pred_logits"], logits, 1e-6, "eval logits")
  assert_close(out["pred_masks"], masks, 1e-6, "eval masks")
  assert queries["mask_embeddings"].shape == (7, 4, 16) and queries["aux_outputs"] == []
  np.testing.assert_allclose(queries["pred_logits"], out["pred_logits"], rtol=0, atol=1e-13)
  windows = config.refiner.windows
  chunks = [refiner.masks_from_embeddings(queries["mask_embeddings"][s:s + windows], args[2][s:s + windows])
            for s in range(0, 7, windows)]
  np.testing.assert_allclose(np.concatenate(chunks), out["pred_masks"], rtol=0, atol=1e-12)


def test_float32_close_to_float64_plain_and_blockwise(reference):
  config, params = converted(reference)
  params32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  args = inputs(reference, 40, np.float32)
  blockwise_config, _ = converted(reference, attention_block=7)
  plain, blockwise = jax.jit(lambda p, *a: (refiner.refine(config, p, *a),
                                            refiner.refine(blockwise_config, p, *a)))(params32, *args)
  logits, masks = expected(reference, 40)
  for name, out in (("plain", plain), ("blockwise", blockwise)):
    assert out["pred_logits"].dtype == jnp.float32 and out["pred_masks"].dtype == jnp.float32
    assert_close(out["pred_logits"], logits, 1e-4, f"float32 {name} logits")
    assert_close(out["pred_masks"], masks, 1e-4, f"float32 {name} masks")
  for key in ("pred_logits", "pred_masks"):
    assert_close(blockwise[key], np.asarray(plain[key], np.float64), 1e-5,
                 f"float32 blockwise vs plain {key}")


def random_refiner_state_dict(rng, hidden_dim, num_classes, ffn_dim, num_layers):
  table = refiner_conversion.expected_table(hidden_dim, num_classes, ffn_dim, num_layers)
  return {k: rng.normal(size=shape).astype(np.float32) for k, (shape, _) in table.items()}


def test_conversion_errors_name_missing_unexpected_and_misshaped_keys(reference):
  sd = {f"refiner.{k}": v for k, v in state_dict(reference).items()}
  config, params = cc.refiner_from_reference(sd, HEADS)
  assert config.model.to_dict() == dict(hidden_dim=16, num_classes=4)
  assert (config.refiner.num_layers, config.refiner.ffn_dim, config.refiner.num_heads) == (LAYERS, 24, HEADS)
  del sd["refiner.conv_short_aggregate_layers.1.2.bias"]
  sd["refiner.conv_short_aggregate_layers.1.1.weight"] = np.zeros(3)
  sd["refiner.transformer_time_self_attention_layers.2.self_attn.in_proj_weight"] = np.zeros((48, 8))
  with pytest.raises(cc.ConversionError) as error:
    cc.refiner_from_reference(sd, HEADS)
  message = str(error.value)
  assert "missing (1): ['conv_short_aggregate_layers.1.2.bias']" in message, message
  assert "unexpected (1): ['conv_short_aggregate_layers.1.1.weight']" in message, message
  assert ("transformer_time_self_attention_layers.2.self_attn.in_proj_weight: (48, 8), expected (48, 16)"
          in message), message
  with pytest.raises(cc.ConversionError, match="'decoder_norm.weight' missing"):
    cc.refiner_from_reference({"class_embed.weight": np.zeros((5, 16))}, HEADS)
  with pytest.raises(cc.ConversionError, match="hidden_dim 16 not divisible by num_heads 3"):
    cc.refiner_from_reference(state_dict(reference), 3)


def test_init_params_have_the_converted_tree_and_pytorch_init():
  config = {"refiner": refiner.default_config()}
  refiner.tiny(config["refiner"])
  params = refiner.init_params(config, jax.random.PRNGKey(0), num_classes=3, hidden_dim=16)
  sd = random_refiner_state_dict(np.random.default_rng(0), 16, 3, 64, 2)
  _, converted_params = cc.refiner_from_reference(sd, 4)
  shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)
  assert shapes(params) == shapes(converted_params)
  attention = params["transformer_time_self_attention_layers_0"]["self_attn"]
  assert not np.any(attention["q_proj"]["bias"]) and np.all(params["conv_norms_1"]["scale"] == 1)
  bound = np.sqrt(6.0 / (16 + 48))   # Xavier over the fused [3C, C] in_proj.
  assert 0.8 * bound < np.max(np.abs(attention["k_proj"]["kernel"])) <= bound
  conv_bound = 1.0 / np.sqrt(5 * 16)   # PyTorch's Conv1d default, fan-in C * k.
  assert 0.8 * conv_bound < np.max(np.abs(params["conv_short_aggregate_layers_0_0"]["bias"])) <= conv_bound


def test_convert_file_converts_the_refiner_of_a_whole_offline_checkpoint(tmp_path):
  hf_state_dict, _, _ = segmenter_fixture.load()
  checkpoint = segmenter_fixture.hf_to_detectron2(hf_state_dict)   # C=32, K=5
  sd = random_refiner_state_dict(np.random.default_rng(1), 32, 5, 24, 2)
  checkpoint.update({f"refiner.{k}": v for k, v in sd.items()})
  path = tmp_path / "lomm_offline.pkl"
  with open(path, "wb") as f:
    pickle.dump({"model": checkpoint}, f)
  config, params = cc.convert_file(str(path), num_heads=4)
  assert sorted(params) == ["refiner", "segmenter"]
  assert (config.refiner.num_layers, config.refiner.ffn_dim, config.refiner.num_heads) == (2, 24, 4)
  np.testing.assert_array_equal(params["refiner"]["conv_short_aggregate_layers_1_2"]["kernel"],
                                sd["conv_short_aggregate_layers.1.2.weight"].transpose(2, 1, 0))
  checkpoint["refiner.class_embed.weight"] = np.zeros((4, 32), np.float32)
  checkpoint["refiner.class_embed.bias"] = np.zeros(4, np.float32)
  with open(path, "wb") as f:
    pickle.dump({"model": checkpoint}, f)
  with pytest.raises(cc.ConversionError, match="refiner weights have num_classes 3, the segmenter has 5"):
    cc.convert_file(str(path), num_heads=4)


def test_validate_names_the_field():
  section = refiner.default_config()
  refiner.validate(section)
  section.frame_chunk = 0
  with pytest.raises(config_validation.ConfigError, match="config.refiner.frame_chunk"):
    refiner.validate(section)
  section.frame_chunk = None
  section.slot_chunk = -1
  with pytest.raises(config_validation.ConfigError, match="config.refiner.slot_chunk"):
    refiner.validate(section)
  section.slot_chunk = None
  section.attention_block = 0
  with pytest.raises(config_validation.ConfigError, match="config.refiner.attention_block"):
    refiner.validate(section)
  section.attention_block, section.dtype = 64, "float16"
  with pytest.raises(config_validation.ConfigError, match="config.refiner.dtype"):
    refiner.validate(section)


def test_refine_compiles_once_per_section_and_shape(reference):
  """Repeated calls (the same config, a copy, new params) reuse one compiled program; a new length or
  a changed section value compiles once more (issue 18)."""
  config, params = converted(reference, attention_block=16)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  args = inputs(reference, 7, np.float32)
  before = refiner.trace_count()
  first = refiner.refine(config, params, *args)
  refiner.refine(copy.deepcopy(config), jax.tree.map(lambda x: x * 1.0, params), *args)
  assert refiner.trace_count() == before + 1
  refiner.refine(config, params, *inputs(reference, 40, np.float32))
  assert refiner.trace_count() == before + 2
  changed = copy.deepcopy(config)
  changed.refiner.frame_chunk = 3
  again = refiner.refine(changed, params, *args)
  assert refiner.trace_count() == before + 3
  np.testing.assert_allclose(again["pred_masks"], first["pred_masks"], rtol=1e-5, atol=1e-5)
