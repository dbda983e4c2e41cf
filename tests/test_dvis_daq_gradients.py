"""DVIS-DAQ's fused position (`dvis_daq.step.update_positions`) has finite gradients where the position
history still holds empty (zero) entries: the norm of a zero row has the gradient 0 / 0, which once reached
the parameters as NaN (step 1 of the synthetic DAQ training) while the loss stayed finite."""

import jax
import jax.numpy as jnp
import numpy as np

from o2vis_jax.association.dvis_daq import config as config_lib
from o2vis_jax.association.dvis_daq import step


def test_fused_position_gradient_is_finite_with_empty_history_entries():
  slots, size, channels = 3, config_lib.POSITION_HISTORY, 4
  rng = np.random.default_rng(0)
  history = np.zeros((slots, size, channels), np.float32)
  history[1, 0] = rng.normal(size=channels)           # slot 1: one position held, eight empty entries.
  count = jnp.array([0, 1, 3])                          # slot 2: three held, of which one is exactly zero.
  history[2, :2] = rng.normal(size=(2, channels))
  fused = jnp.asarray(rng.normal(size=(slots, channels)), jnp.float32)
  new_pos = jnp.asarray(rng.normal(size=(slots, channels)), jnp.float32)
  update = jnp.array([True, True, True])

  def objective(new_pos, history):
    fused_new, history_new, _ = step.update_positions(fused, history, count, new_pos, update)
    return jnp.sum(fused_new ** 2) + jnp.sum(history_new ** 2)

  grads = jax.grad(objective, argnums=(0, 1))(new_pos, jnp.asarray(history))
  assert all(np.all(np.isfinite(g)) for g in grads)
  # The value is F.normalize's: beta = max(0, mean cos) over the held entries; a zero entry has cos 0.
  fused_new, _, count_new = step.update_positions(fused, jnp.asarray(history), count, new_pos, update)
  np.testing.assert_allclose(fused_new[0], new_pos[0], rtol=0, atol=0)    # the first position as is.
  unit = lambda x: x / np.linalg.norm(x)
  beta1 = max(0.0, float(unit(history[1, 0]) @ unit(np.asarray(new_pos[1]))))
  np.testing.assert_allclose(fused_new[1], (1 - beta1) * fused[1] + beta1 * new_pos[1], rtol=1e-5, atol=1e-6)
  cos2 = [float(unit(history[2, h]) @ unit(np.asarray(new_pos[2]))) for h in range(2)] + [0.0]
  beta2 = max(0.0, sum(cos2) / 3)
  np.testing.assert_allclose(fused_new[2], (1 - beta2) * fused[2] + beta2 * new_pos[2], rtol=1e-5, atol=1e-6)
  assert count_new.tolist() == [1, 2, 4]
