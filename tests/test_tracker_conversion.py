"""Weight import of the reference tracker: a PyTorch module with the reference's parameter names (built
here from REFERENCE.md section 1, torch.nn.MultiheadAttention for the fused projections) is converted and
its forward (written with torch ops) compared with ours."""

import jax
import numpy as np
import pytest
import torch
from torch import nn

import reference_numpy as ref
from o2vis_jax import association
from o2vis_jax.checkpoint_conversion import ConversionError, tracker_from_reference

C, K, FFN, N, HEADS, LAYERS = 16, 4, 24, 5, 4, 2


class _MLP(nn.Module):
  def __init__(self):
    super().__init__()
    self.layers = nn.ModuleList([nn.Linear(C, C) for _ in range(3)])

  def forward(self, x):
    for i, layer in enumerate(self.layers):
      x = layer(x) if i == 2 else torch.relu(layer(x))
    return x


class _Attention(nn.Module):
  def __init__(self, attribute):
    super().__init__()
    setattr(self, attribute, nn.MultiheadAttention(C, HEADS, batch_first=True))
    self.attribute = attribute
    self.norm = nn.LayerNorm(C)

  def forward(self, identity, query, kv):
    return self.norm(identity + getattr(self, self.attribute)(query, kv, kv, need_weights=False)[0])


class _FFN(nn.Module):
  def __init__(self):
    super().__init__()
    self.linear1, self.linear2, self.norm = nn.Linear(C, FFN), nn.Linear(FFN, C), nn.LayerNorm(C)

  def forward(self, x):
    return self.norm(x + self.linear2(torch.relu(self.linear1(x))))


class _TorchTracker(nn.Module):
  """The reference parameter layout (state_dict keys as in a LOMM checkpoint's `tracker.*`)."""

  def __init__(self):
    super().__init__()
    for x in ("E", "A"):
      setattr(self, f"transformer_cross_attention_layers_{x}",
              nn.ModuleList([_Attention("multihead_attn") for _ in range(LAYERS)]))
      setattr(self, f"transformer_self_attention_layers_{x}",
              nn.ModuleList([_Attention("self_attn") for _ in range(LAYERS)]))
      setattr(self, f"transformer_ffn_layers_{x}", nn.ModuleList([_FFN() for _ in range(LAYERS)]))
    self.ref_proj, self.mask_embed = _MLP(), _MLP()
    self.decoder_norm, self.class_embed = nn.LayerNorm(C), nn.Linear(C, K + 1)

  def stack(self, x, kv, anchor=None):
    identity, source, query = torch.zeros(()), kv, None if anchor is None else self.ref_proj(anchor)
    for j in range(LAYERS):
      q = self.ref_proj(source) if anchor is None else query
      out = getattr(self, f"transformer_cross_attention_layers_{x}")[j](identity, q, kv)
      out = getattr(self, f"transformer_self_attention_layers_{x}")[j](out, out, out)
      identity = source = getattr(self, f"transformer_ffn_layers_{x}")[j](out)
    return identity


@pytest.fixture(scope="module")
def torch_tracker():
  torch.manual_seed(0)
  module = _TorchTracker().double()
  with torch.no_grad():  # non-trivial biases and norms (PyTorch initialises them to 0 / 1).
    for name, p in module.named_parameters():
      if p.dim() == 1:
        p.add_(0.2 * torch.randn_like(p))
  return module


def test_converted_forward_equals_torch(torch_tracker):
  state_dict = {"tracker." + k: v for k, v in torch_tracker.state_dict().items()}
  state_dict["sem_seg_head.predictor.class_embed.weight"] = torch.zeros(3, 3)  # not the tracker's: ignored
  config, params = tracker_from_reference(state_dict, HEADS)
  assert (config.model.hidden_dim, config.model.num_classes) == (C, K)
  assert (config.tracker.num_layers, config.tracker.ffn_dim, config.tracker.num_heads) == (LAYERS, FFN, HEADS)
  rng = np.random.default_rng(0)
  kv, anchor = rng.normal(size=(N, C)), rng.normal(size=(N, C))
  with torch.no_grad():
    tk, ta = torch.from_numpy(kv), torch.from_numpy(anchor)
    want_e = torch_tracker.stack("E", tk).numpy()
    want_a = torch_tracker.stack("A", tk, ta).numpy()
    want_logits = torch_tracker.class_embed(torch_tracker.decoder_norm(torch.from_numpy(want_a))).numpy()
  with jax.enable_x64(True):
    bound = association.get("o2vis").module(config, hidden_dim=C, num_classes=K).bind({"params": params})
    got_e = np.asarray(bound.run_stack("E", kv)[-1])
    got_a = np.asarray(bound.run_stack("A", kv, anchor=anchor)[-1])
    got_logits = np.asarray(bound.class_embed(bound.normed(got_a)))
  np.testing.assert_allclose(got_e, want_e, rtol=0, atol=1e-10)
  np.testing.assert_allclose(got_a, want_a, rtol=0, atol=1e-10)
  np.testing.assert_allclose(got_logits, want_logits, rtol=0, atol=1e-10)
  # The NumPy reference of the other tests reads the same state dict and agrees.
  sd = {k: v.numpy() for k, v in torch_tracker.state_dict().items()}
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
