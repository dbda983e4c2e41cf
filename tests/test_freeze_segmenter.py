"""`train.freeze_segmenter`: CAVIS's segmenter stage on a shared, trained segmenter (configs/synthetic_tiny_cavis.py)
trains only the method's segmenter-stage params (the ReID head); the segmenter is the init checkpoint's, kept
fixed and out of the gradient, and the export holds it bit for bit next to the head."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cavis_tiny, synthetic_tiny_cavis
from o2vis_jax import association, config_validation, losses, tasks
from o2vis_jax.checkpoint_conversion import save_converted
from o2vis_jax.models import init_segmenter_params
from shared_inputs import lighten_segmenter


@pytest.fixture(scope="module")
def frozen_setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("freeze_segmenter")
  config = lighten_segmenter(cavis_tiny.get_config("segmenter"))
  segmenter = jax.device_get(init_segmenter_params(config, jax.random.PRNGKey(11)))
  init = save_converted(str(root / "segmenter"), config, {"segmenter": segmenter})
  del init
  config.init_checkpoint = str(root / "segmenter")
  config.train.freeze_segmenter = True
  config.batch_size = 2
  batch = next(tasks.make_train_iterator(config, seed=0, workdir=str(root / "data")))
  return config, segmenter, jax.tree.map(lambda x: jnp.asarray(x[:2]), batch)


def test_only_the_reid_head_gets_a_gradient_and_the_export_keeps_the_segmenter(frozen_setup):
  config, segmenter, batch = frozen_setup
  config_validation.validate(config, training=True)
  task = tasks.SegmenterTask(config)
  task._num_masks = losses.average_num_masks          # outside the trainer's shard_map: no device axis
  trainable, frozen = task.init_params(jax.random.PRNGKey(3))
  assert set(trainable) == {"tracker"} and set(frozen) == {"segmenter"}
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(frozen["segmenter"]), segmenter)
  rngs = jax.random.key_data(jax.random.split(jax.random.PRNGKey(5), 2))
  (total, terms), grads = jax.jit(jax.value_and_grad(
      lambda p: task.loss(p, frozen, batch, rngs, 0, "main"), has_aux=True))(trainable)
  assert np.isfinite(float(total)) and float(terms["loss_ctx"]) > 0 and float(terms["loss_proto"]) > 0
  norms = {name: max(float(jnp.abs(g).max()) for g in jax.tree.leaves(tree))
           for name, tree in grads["tracker"].items()}
  assert norms.pop("reid_embed") > 0
  assert max(norms.values()) == 0.0, norms            # CAIT: not in the segmenter stage's loss
  # The optimiser keeps everything but the head fixed (the trainer's frozen subtrees).
  assert "tracker/reid_embed" not in task.frozen_subtrees and "tracker/ctx_query_embed" in task.frozen_subtrees
  exported = task.export_params(jax.device_get(trainable))
  assert set(exported) == {"segmenter", "tracker"} and set(exported["tracker"]) == {"reid_embed"}
  jax.tree.map(np.testing.assert_array_equal, exported["segmenter"], segmenter)


def test_freeze_segmenter_needs_a_segmenter_stage_method_and_an_init_checkpoint():
  config = cavis_tiny.get_config("segmenter")
  config.train.freeze_segmenter = True
  with pytest.raises(config_validation.ConfigError, match="freeze_segmenter=True needs config.init_checkpoint"):
    config_validation.validate(config, training=True)
  config = association.with_method(config, "o2vis")
  config.init_checkpoint = "/somewhere"
  with pytest.raises(config_validation.ConfigError, match="method='o2vis' has no segmenter-stage params"):
    config_validation.validate(config, training=True)


def test_synthetic_cavis_config_is_one_frozen_segmenter_run():
  config = config_validation.validate(synthetic_tiny_cavis.get_config(), training=True)
  assert config.train.task == "segmenter+tracker" and config.train.freeze_segmenter
  assert config.init_checkpoint.endswith("assets/synthetic_tiny")
  assert 4 * config.train.segmenter_steps == config.num_train_steps       # CAVIS's 40k : 160k
