"""The trainer's mechanics on a small least-squares task (tests/toy_task.py): device-count invariance,
exact resume after a kill, SIGTERM checkpointing, two processes == one, the NaN guard, and the optimiser."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import portpicker
import pytest

from o2vis_jax import optimizer as optimizer_lib
from o2vis_jax import train
import toy_task

_HERE = os.path.dirname(os.path.abspath(__file__))
_MAIN = os.path.join(_HERE, "toy_train_main.py")


def _losses(workdir):
  """step -> loss, the last record of a step winning (a resumed run re-logs replayed steps)."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      record = json.loads(line)
      out[record["step"]] = record["loss"]
  return out


def _subprocess_env():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _one_step(num_devices):
  config = toy_task.toy_config()
  task = toy_task.ToyTask(config)
  state, frozen, tx = train.initial_state(task, config)
  mesh = train.make_mesh(jax.devices()[:num_devices])
  step = train.make_train_step(task, tx, mesh, config.batch_size)
  batch = train._global_batch(next(task.train_iterator(config.seed)), mesh)
  new_state, metrics = step(state, frozen, batch)
  update = np.asarray(new_state.params["w"], np.float64) - np.asarray(state.params["w"], np.float64)
  return update, float(metrics["loss"])


def test_one_device_equals_four_devices():
  assert len(jax.devices()) >= 4, "tests/conftest.py forces 4 host devices"
  update1, loss1 = _one_step(1)
  update4, loss4 = _one_step(4)
  # Sums over 1 or 4 devices differ in float32 reduction order: compare at that order's scale (the loss
  # relative to itself, the update relative to its norm), far below what a wrong shard would change.
  np.testing.assert_allclose(loss4, loss1, rtol=1e-5)
  assert np.linalg.norm(update1) > 0
  assert np.linalg.norm(update4 - update1) <= 1e-4 * np.linalg.norm(update1)


def test_loss_matches_numpy_and_decreases(tmp_path):
  config = toy_task.toy_config(num_train_steps=6)
  task = toy_task.ToyTask(config)
  state = train.train_and_evaluate(config, str(tmp_path), task, progress=False)
  losses = _losses(str(tmp_path))
  assert sorted(losses) == [1, 2, 3, 4, 5, 6]
  assert int(state.step) == 6
  # On the whole data set the trained weights fit better than the initial ones.
  initial, _, _ = train.initial_state(task, config)
  rng = np.random.default_rng(123)
  x = rng.normal(size=(64, toy_task.DIM))
  y = x @ np.arange(1, toy_task.DIM + 1)
  full_loss = lambda w: np.mean((x @ (2.0 * np.asarray(w)) - y) ** 2)
  assert full_loss(state.params["w"]) < 0.5 * full_loss(initial.params["w"])
  # The logged learning rate follows the step decay at step 4 (x0.5).
  records = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  lrs = {r["step"]: r["learning_rate"] for r in records}
  np.testing.assert_allclose([lrs[4], lrs[5]], [0.3, 0.15], rtol=1e-6)


class _Killed(RuntimeError):
  pass


def test_resume_after_kill_equals_uninterrupted(tmp_path):
  config = toy_task.toy_config(num_train_steps=6, checkpoint_every_steps=2)
  full_dir, killed_dir = str(tmp_path / "full"), str(tmp_path / "killed")
  train.train_and_evaluate(config, full_dir, toy_task.ToyTask(config), progress=False)

  class KilledTask(toy_task.ToyTask):
    """Dies when fetching the batch of step 4 (after the step-2 checkpoint, before step 4's)."""

    def train_iterator(self, seed):
      inner = super().train_iterator(seed)
      outer = self

      class It:
        count = 0

        def __next__(self):
          It.count += 1
          if It.count == 4:
            raise _Killed()
          return next(inner)

        def get_state(self):
          return inner.get_state()

        def set_state(self, s):
          inner.set_state(s)
      del outer
      return It()

  with pytest.raises(_Killed):
    train.train_and_evaluate(config, killed_dir, KilledTask(config), progress=False)
  assert sorted(os.listdir(os.path.join(killed_dir, "checkpoints"))) == ["2"]
  train.train_and_evaluate(config, killed_dir, toy_task.ToyTask(config), progress=False)
  full, resumed = _losses(full_dir), _losses(killed_dir)
  for step in range(1, 7):
    assert resumed[step] == pytest.approx(full[step], rel=1e-6), (step, full, resumed)


def test_nan_guard_names_step_and_keeps_last_good_checkpoint(tmp_path):
  config = toy_task.toy_config(num_train_steps=6, checkpoint_every_steps=2)
  task = toy_task.ToyTask(config)
  # Find which example lands in step 3's batch, then poison it.
  it = task.train_iterator(config.seed)
  next(it), next(it)
  third = next(it)
  rng = np.random.default_rng(123)
  x = rng.normal(size=(64, toy_task.DIM)).astype(np.float32)
  index = int(np.where(np.all(x == third["x"][0], axis=1))[0][0])
  with pytest.raises(train.NonFiniteLossError, match="at step 3"):
    train.train_and_evaluate(config, str(tmp_path), toy_task.ToyTask(config, nan_at_example=index),
                             progress=False)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


def test_sigterm_checkpoints_and_resume_continues(tmp_path):
  workdir = str(tmp_path)
  proc = subprocess.Popen([sys.executable, _MAIN, workdir, "200", "--sleep", "0.2",
                           "--checkpoint_every", "1000"], env=_subprocess_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 120
  while time.time() < deadline and not (os.path.exists(metrics) and os.path.getsize(metrics) > 0):
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  saved = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()]
  assert len(saved) == 1 and 0 < saved[0] < 200, (saved, out)
  before = _losses(workdir)
  assert max(before) == saved[0]
  # Resuming continues from the SIGTERM checkpoint to the end.
  out = subprocess.run([sys.executable, _MAIN, workdir, str(saved[0] + 2)], env=_subprocess_env(),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stdout + out.stderr
  assert f"finished at step {saved[0] + 2}" in out.stdout
  after = _losses(workdir)
  assert sorted(after) == list(range(1, saved[0] + 3))


def test_two_processes_equal_one(tmp_path):
  single = str(tmp_path / "single")
  out = subprocess.run([sys.executable, _MAIN, single, "4"], env=_subprocess_env(),
                       capture_output=True, text=True, timeout=180)
  assert out.returncode == 0, out.stdout + out.stderr
  port = portpicker.pick_unused_port()
  multi = str(tmp_path / "multi")
  procs = [subprocess.Popen([sys.executable, _MAIN, multi, "4", "--coordinator", f"127.0.0.1:{port}",
                             "--num_processes", "2", "--process_id", str(i)], env=_subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=300)[0] for p in procs]
  for p, o in zip(procs, outs):
    assert p.returncode == 0, o
  np.testing.assert_allclose(np.load(os.path.join(multi, "final_w.npy")),
                             np.load(os.path.join(single, "final_w.npy")), rtol=1e-5)
  single_losses, multi_losses = _losses(single), _losses(multi)
  for step in range(1, 5):
    assert multi_losses[step] == pytest.approx(single_losses[step], rel=1e-5)


def test_weight_decay_mask_skips_norms_and_query_embeddings():
  params = {"decoder_norm": {"scale": 1.0, "bias": 1.0}, "class_embed": {"kernel": 1.0},
            "query_feat": {"embedding": 1.0}, "backbone": {"conv1": {"kernel": 1.0}}}
  mask = optimizer_lib.weight_decay_mask(params)
  assert mask == {"decoder_norm": {"scale": False, "bias": False}, "class_embed": {"kernel": True},
                  "query_feat": {"embedding": False}, "backbone": {"conv1": {"kernel": True}}}


def test_optimizer_clips_global_norm_and_scales_backbone():
  config = toy_task.toy_config().train
  config.clip_grad_norm = 1.0
  config.weight_decay = 0.0
  config.backbone_lr_multiplier = 0.1
  params = {"backbone": jnp.zeros(2), "head": jnp.zeros(2)}
  tx = optimizer_lib.create_optimizer(config, params)
  grads = {"backbone": jnp.array([30.0, 40.0]), "head": jnp.array([0.0, 0.0])}
  updates, _ = tx.update(grads, tx.init(params), params)
  # Adam's first step is -lr * sign(g) (|m/sqrt(v)| = 1) after clipping; backbone x0.1.
  np.testing.assert_allclose(updates["backbone"], [-0.03, -0.03], rtol=1e-4)
  np.testing.assert_allclose(updates["head"], [0.0, 0.0], atol=1e-8)


def test_frozen_batchnorm_never_updates():
  config = toy_task.toy_config().train
  config.backbone_lr_multiplier = 0.1   # masking and the backbone multiplier together.
  params = {"backbone": {"res2_0": {"norm1": {"scale": jnp.ones(2), "bias": jnp.zeros(2),
                                              "mean": jnp.zeros(2), "var": jnp.ones(2)},
                                    "conv1": {"kernel": jnp.ones(2)}},
                         # A GroupNorm (backbone.norm='group_norm': no running statistics) trains.
                         "res2_1": {"norm1": {"scale": jnp.ones(2), "bias": jnp.zeros(2)}}},
            "predictor": {"decoder_norm": {"scale": jnp.ones(2)}}}
  tx = optimizer_lib.create_optimizer(config, params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  for leaf in ("scale", "bias", "mean", "var"):
    assert float(jnp.abs(updates["backbone"]["res2_0"]["norm1"][leaf]).sum()) == 0.0
  for leaf in ("scale", "bias"):
    assert float(jnp.abs(updates["backbone"]["res2_1"]["norm1"][leaf]).sum()) > 0.0
  assert float(jnp.abs(updates["backbone"]["res2_0"]["conv1"]["kernel"]).sum()) > 0.0
  assert float(jnp.abs(updates["predictor"]["decoder_norm"]["scale"]).sum()) > 0.0
