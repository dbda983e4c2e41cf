"""The association seam: a method defined here, in the test file, runs through `association.track`,
chunked video inference and one training step of the tracking task, with no file of the library touched.
This is the proof that a new method is one package (README, "Adding an association method")."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import tiny
from o2vis_jax import association, inference, tasks, train


class PreviousFrameHungarian(association.Method):
  """Hungarian of each frame's normed queries against the previous frame's aligned ones, with one
  trainable parameter (a logit scale) so that it has a loss to train."""
  name = "test_previous_frame"
  required_inputs = ("embeds", "logits", "masks")

  def default_config(self):
    return ml_collections.ConfigDict(dict(matcher="host", keep=4))

  def init_params(self, config, rng, *, num_classes, hidden_dim):
    del config, rng, num_classes, hidden_dim
    return {"logit_scale": jnp.ones((), jnp.float32)}

  def init_state(self, config, *, num_queries, hidden_dim, dtype):
    return dict(previous=jnp.zeros((num_queries, hidden_dim), dtype), started=jnp.zeros((), bool))

  def step(self, config, params, state, frame, *, train):
    del train
    embeds = frame["embeds"]
    identity = jnp.arange(embeds.shape[0], dtype=jnp.int32)
    cost = association.cosine_cost(state["previous"], embeds)
    assignment = jax.lax.cond(
        state["started"],
        lambda: association.hungarian(cost, matcher=self.section(config).matcher),
        lambda: identity)
    take = lambda x: jnp.take(x, assignment, axis=0)
    outputs = dict(pred_logits=take(frame["logits"]) * params["logit_scale"],
                   pred_masks=take(frame["masks"]), assignment=assignment)
    return dict(previous=take(embeds), started=jnp.ones((), bool)), outputs

  def loss(self, config, key, outputs, targets, num_masks, *, phase):
    del config, key, num_masks, phase
    # A trivial loss: every slot's cross-entropy to no-object on the valid frames.
    logits = outputs["pred_logits"].astype(jnp.float32)
    nll = jax.nn.logsumexp(logits, -1) - logits[..., -1]
    valid = targets.frame_valid[:, None].astype(jnp.float32)
    total = jnp.sum(nll * valid) / jnp.maximum(jnp.sum(valid) * logits.shape[1], 1.0)
    return total, {"loss_no_object": total}

  def max_num(self, config, default):
    return self.section(config).keep


@pytest.fixture(scope="module")
def method():
  registered = association.register(PreviousFrameHungarian())
  yield registered
  association.unregister(registered.name)


def _config(method_name):
  config = tiny.get_config()
  return association.with_method(config, method_name)


def test_registry(method):
  assert method.name in association.names() and association.get(method.name) is method
  assert method.trainable and not association.get("training_free").trainable
  with pytest.raises(ValueError, match="already registered"):
    association.register(PreviousFrameHungarian())
  with pytest.raises(ValueError, match="not a registered association method"):
    association.get("no_such_method")
  config = _config(method.name)
  assert config.association.method == method.name and config[method.name].keep == 4


def test_track_follows_permuted_objects(method):
  """Hand-computed: frame t shows the objects of frame 0 in another order; slot n keeps object n."""
  rng = np.random.default_rng(0)
  base = rng.normal(size=(5, 8)).astype(np.float32)
  orders = [np.arange(5), np.array([2, 0, 4, 1, 3]), np.array([4, 3, 2, 1, 0])]
  embeds = np.stack([base[o] for o in orders])
  logits = np.stack([np.eye(5, 4, dtype=np.float32)[o] for o in orders])
  masks = np.zeros((3, 5, 2, 2), np.float32)
  config = ml_collections.ConfigDict(dict(association=dict(method=method.name)))   # section absent
  params = method.init_params(config, None, num_classes=3, hidden_dim=8)
  out = association.track(config, params, dict(embeds=embeds, logits=logits, masks=masks,
                                               valid=np.array([True, True, False])))
  np.testing.assert_array_equal(np.asarray(out["assignment"][1]), np.argsort(orders[1]))
  np.testing.assert_array_equal(np.asarray(out["pred_logits"][1]), logits[0])
  # The driver's guard: the padded frame 2 leaves the state as it was, so a 4th frame still matches
  # against frame 1.
  more = dict(embeds=np.concatenate([embeds, embeds[2:]]), logits=np.concatenate([logits, logits[2:]]),
              masks=np.concatenate([masks, masks[2:]]), valid=np.array([True, True, False, True]))
  out = association.track(config, params, more)
  np.testing.assert_array_equal(np.asarray(out["pred_logits"][3]), logits[0])
  with pytest.raises(KeyError, match="test_previous_frame.*masks"):
    association.track(config, params, dict(embeds=embeds, logits=logits))
  instances = association.video_instances(config, out, valid=more["valid"])
  assert len(instances) == 4                      # the method's own max_num
  assert instances[0]["score"] >= instances[-1]["score"]


def test_chunked_video_inference(method):
  config = _config(method.name)
  params = inference.init_params(config, seed=0)
  assert set(params["tracker"]) == {"logit_scale"}
  rng = np.random.default_rng(3)
  video = [rng.integers(0, 255, size=(40, 56, 3), dtype=np.uint8) for _ in range(5)]
  predictions = {}
  for chunk in (2, 5):
    predictor = inference.VideoPredictor.from_config(config, params, chunk_size=chunk)
    assert predictor.max_num == 4
    predictions[chunk] = predictor.predict(iter(video), 40, 56, keep_frame_logits=True)
  np.testing.assert_allclose(predictions[2].frame_logits, predictions[5].frame_logits, atol=1e-4)
  instances = predictions[2].instances(predictor.max_num)
  assert len(instances) == 4 and all(len(i["segmentations"]) == 5 for i in instances)


def test_one_training_step_of_the_tracking_task(method):
  config = _config(method.name)
  task = tasks.TrackingTask(config)
  assert task.phases == ("main",)
  state, frozen, tx = train.initial_state(task, config)
  b, t, h, w, g = config.batch_size, 2, 64, 64, 3
  rng = np.random.default_rng(1)
  batch = dict(frames=rng.uniform(0, 255, (b, t, h, w, 3)).astype(np.float32),
               pixel_valid=np.ones((b, t, h, w), bool), frame_valid=np.ones((b, t), bool),
               labels=np.zeros((b, g), np.int32), instance_valid=np.zeros((b, g), bool),
               masks=np.zeros((b, t, g, h, w), bool), present=np.zeros((b, t, g), bool))
  mesh = train.make_mesh(jax.devices()[:1])
  step = train.make_train_step(task, tx, mesh, config.batch_size)
  new_state, metrics = step(state, frozen, train._global_batch(batch, mesh))
  assert np.isfinite(float(metrics["loss"])) and "loss_no_object" in metrics
  assert float(metrics["grad_norm"]) > 0
  assert float(new_state.params["logit_scale"]) != float(state.params["logit_scale"])
  with pytest.raises(ValueError, match="training-free"):
    tasks.TrackingTask(_config("training_free"))
