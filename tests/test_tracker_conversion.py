"""Weight import of the reference tracker: a PyTorch module with the reference's parameter names (built
in scripts/make_torch_fixtures.py from REFERENCE.md section 1, torch.nn.MultiheadAttention for the fused
projections; its state dict and outputs are recorded in tests/fixtures/torch_references.npz) is converted
and our forward compared with its; plus the table's errors."""

import os

import jax
import numpy as np
import pytest

import reference_numpy as ref
from o2vis_jax import association
from o2vis_jax.checkpoint_conversion import ConversionError, tracker_from_reference

C, K, FFN, N, HEADS, LAYERS = 16, 4, 24, 5, 4, 2


FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "torch_references.npz")


def test_converted_forward_equals_torch():
  """The PyTorch tracker of scripts/make_torch_fixtures.py (the reference's parameter names, fused
  `nn.MultiheadAttention` projections, float64): its state dict converted, our forward vs its outputs."""
  fixture = np.load(FIXTURE)
  prefix = "tracker/state_dict/"
  state_dict = {"tracker." + k[len(prefix):]: fixture[k] for k in fixture.files if k.startswith(prefix)}
  state_dict["sem_seg_head.predictor.class_embed.weight"] = np.zeros((3, 3))  # not the tracker's: ignored
  config, params = tracker_from_reference(state_dict, HEADS)
  assert (config.model.hidden_dim, config.model.num_classes) == (C, K)
  assert (config.tracker.num_layers, config.tracker.ffn_dim, config.tracker.num_heads) == (LAYERS, FFN, HEADS)
  kv, anchor = fixture["tracker/kv"], fixture["tracker/anchor"]
  want_e, want_a, want_logits = fixture["tracker/self_E"], fixture["tracker/anchor_A"], fixture["tracker/logits"]
  with jax.enable_x64(True):
    bound = association.get("o2vis").module(config, hidden_dim=C, num_classes=K).bind({"params": params})
    got_e = np.asarray(bound.run_stack("E", kv)[-1])
    got_a = np.asarray(bound.run_stack("A", kv, anchor=anchor)[-1])
    got_logits = np.asarray(bound.class_embed(bound.normed(got_a)))
  np.testing.assert_allclose(got_e, want_e, rtol=0, atol=1e-10)
  np.testing.assert_allclose(got_a, want_a, rtol=0, atol=1e-10)
  np.testing.assert_allclose(got_logits, want_logits, rtol=0, atol=1e-10)
  # The NumPy reference of the other tests reads the same state dict and agrees.
  sd = {k[len("tracker."):]: v for k, v in state_dict.items() if k.startswith("tracker.")}
  np.testing.assert_allclose(ref.self_ref(sd, "E", kv, LAYERS, HEADS)[-1], want_e, rtol=0, atol=1e-10)


def test_bare_state_dict_and_split_of_fused_projection():
  sd = ref.random_state_dict(np.random.default_rng(1), C, K, FFN, LAYERS)
  _, params = tracker_from_reference(sd, HEADS)
  fused = sd["transformer_self_attention_layers_A.1.self_attn.in_proj_weight"]
  attn = params["transformer_self_attention_layers_A_1"]["self_attn"]
  np.testing.assert_array_equal(attn["k_proj"]["kernel"], fused[C:2 * C].T)
  np.testing.assert_array_equal(attn["v_proj"]["bias"],
                                sd["transformer_self_attention_layers_A.1.self_attn.in_proj_bias"][2 * C:])
  np.testing.assert_array_equal(params["mask_embed"]["layers_2"]["kernel"],
                                sd["mask_embed.layers.2.weight"].T)
  np.testing.assert_array_equal(params["decoder_norm"]["scale"], sd["decoder_norm.weight"])


def test_errors_name_missing_unexpected_and_misshaped_keys():
  sd = ref.random_state_dict(np.random.default_rng(2), C, K, FFN, LAYERS)
  del sd["transformer_ffn_layers_E.1.linear2.bias"]
  sd["transformer_ffn_layers_E.1.dropout.p"] = np.zeros(1)
  sd["ref_proj.layers.1.weight"] = np.zeros((C, C + 1))
  with pytest.raises(ConversionError) as error:
    tracker_from_reference(sd, HEADS)
  message = str(error.value)
  assert "missing (1): ['transformer_ffn_layers_E.1.linear2.bias']" in message
  assert "unexpected (1): ['transformer_ffn_layers_E.1.dropout.p']" in message
  assert f"ref_proj.layers.1.weight: ({C}, {C + 1}), expected ({C}, {C})" in message
  with pytest.raises(ConversionError, match="decoder_norm.weight"):
    tracker_from_reference({"backbone.conv1.weight": np.zeros(3)}, HEADS)
  with pytest.raises(ConversionError, match="not divisible by num_heads"):
    tracker_from_reference(ref.random_state_dict(np.random.default_rng(2), C, K, FFN, LAYERS), 5)
