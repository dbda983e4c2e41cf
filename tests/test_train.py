"""The trainer's mechanics on a small least-squares task (tests/toy_task.py): device-count invariance,
exact resume after a kill, stopping on SIGINT / SIGTERM (checkpoint, exit 130 / 143, exact resume; before the
first step; a second signal), two processes == one, the NaN guard, and the optimiser."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
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


def test_nan_guard_catches_a_non_finite_gradient_under_a_finite_loss(tmp_path):
  # A NaN gradient with a finite loss (e.g. the norm of a zero vector) poisons the next step's params; the
  # guard names the step whose gradient it was, not the next one.
  config = toy_task.toy_config(num_train_steps=6, checkpoint_every_steps=2)
  it = toy_task.ToyTask(config).train_iterator(config.seed)
  next(it), next(it)
  third = next(it)
  x = np.random.default_rng(123).normal(size=(64, toy_task.DIM)).astype(np.float32)
  index = int(np.where(np.all(x == third["x"][0], axis=1))[0][0])
  with pytest.raises(train.NonFiniteLossError, match=r"non-finite gradient \(norm nan; loss [0-9.]+\) at step 3"):
    train.train_and_evaluate(config, str(tmp_path), toy_task.ToyTask(config, nan_gradient_at_example=index),
                             progress=False)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]


def _start(workdir, *args, log):
  """toy_train_main.py in a subprocess, its stdout and stderr into the file `log` (polled: no pipe to
  fill, and a line shows as soon as it is written)."""
  with open(log, "w") as f:
    return subprocess.Popen([sys.executable, _MAIN, workdir, *map(str, args)], env=_subprocess_env(),
                            stdout=f, stderr=subprocess.STDOUT, text=True)


def _wait_for(condition, what, proc, log, timeout=180):
  """Polls `condition()`; a generous timeout, since a loaded CI machine starts JAX slowly."""
  deadline = time.time() + timeout
  while not condition():
    if proc.poll() is not None:
      raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}:\n{_read(log)}")
    if time.time() > deadline:
      proc.kill()
      raise AssertionError(f"no {what} after {timeout} s:\n{_read(log)}")
    time.sleep(0.05)


def _read(path):
  with open(path) as f:
    return f.read()


def _logged_a_step(workdir):
  metrics = os.path.join(workdir, "metrics.jsonl")
  return lambda: os.path.exists(metrics) and os.path.getsize(metrics) > 0


def _saved_steps(workdir):
  directory = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(directory) else []


def _finish(proc, log, timeout=180):
  try:
    proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise AssertionError(f"the run did not stop within {timeout} s:\n{_read(log)}")
  return _read(log)


def test_sigint_checkpoints_and_resume_equals_uninterrupted(tmp_path):
  steps = "60"
  full_dir, workdir = str(tmp_path / "full"), str(tmp_path / "interrupted")
  # The run that never stops goes alongside (same single device, so the same float32 sums).
  full = _start(full_dir, steps, "--checkpoint_every", "1000", log=str(tmp_path / "full.log"))
  log = str(tmp_path / "interrupted.log")
  # 0.25 s per batch: 15 s of steps, time enough to interrupt after the first on a loaded machine.
  command = [steps, "--checkpoint_every", "1000"]
  proc = _start(workdir, *command, "--sleep", "0.25", log=log)
  _wait_for(_logged_a_step(workdir), "logged step", proc, log)
  proc.send_signal(signal.SIGINT)
  out = _finish(proc, log)
  assert proc.returncode == 130, out
  assert "SIGINT received" in out, out
  saved = _saved_steps(workdir)
  assert len(saved) == 1 and 0 < saved[0] < 60, (saved, out)
  assert (f"interrupted by SIGINT at step {saved[0]}; checkpoint saved in "
          f"{os.path.join(workdir, 'checkpoints')}; run the same command to resume") in out
  assert "KeyboardInterrupt" not in out and "Exception ignored" not in out, out
  assert max(_losses(workdir)) == saved[0]
  # The same command (without --sleep, which only slows the data) resumes, says so, and continues exactly.
  resumed = subprocess.run([sys.executable, _MAIN, workdir, *command], env=_subprocess_env(),
                           capture_output=True, text=True, timeout=180)
  assert resumed.returncode == 0, resumed.stdout + resumed.stderr
  assert f"Resumed from step {saved[0]} ({os.path.join(workdir, 'checkpoints')})" in resumed.stderr
  assert "finished at step 60" in resumed.stdout
  out = _finish(full, str(tmp_path / "full.log"))
  assert full.returncode == 0, out
  expected, got = _losses(full_dir), _losses(workdir)
  assert sorted(got) == sorted(expected) == list(range(1, 61))
  assert [got[s] for s in range(1, 61)] == [expected[s] for s in range(1, 61)], (expected, got)


def test_sigterm_checkpoints_and_resume_continues(tmp_path):
  workdir, log = str(tmp_path), str(tmp_path / "run.log")
  proc = _start(workdir, "200", "--sleep", "0.2", "--checkpoint_every", "1000", log=log)
  _wait_for(_logged_a_step(workdir), "logged step", proc, log)
  proc.send_signal(signal.SIGTERM)
  out = _finish(proc, log)
  assert proc.returncode == 143, out   # 128 + SIGTERM, as a shell reports it
  saved = _saved_steps(workdir)
  assert len(saved) == 1 and 0 < saved[0] < 200, (saved, out)
  assert f"interrupted by SIGTERM at step {saved[0]}; checkpoint saved" in out, out
  before = _losses(workdir)
  assert max(before) == saved[0]
  # Resuming continues from the SIGTERM checkpoint to the end.
  out = subprocess.run([sys.executable, _MAIN, workdir, str(saved[0] + 2)], env=_subprocess_env(),
                       capture_output=True, text=True, timeout=180)
  assert out.returncode == 0, out.stdout + out.stderr
  assert f"finished at step {saved[0] + 2}" in out.stdout
  after = _losses(workdir)
  assert sorted(after) == list(range(1, saved[0] + 3))


@pytest.mark.parametrize("pause_at, signum", [("prepare", signal.SIGTERM), ("first_batch", signal.SIGINT)],
                         ids=["SIGTERM-preparing-data", "SIGINT-reading-first-batch"])
def test_signal_before_the_first_step_stops_without_training(tmp_path, pause_at, signum):
  """While the data set is prepared, or the first batch read (before the first compilation), a signal
  stops the run at the next check: no step, no checkpoint of an untrained state."""
  workdir, log, marker = str(tmp_path / "run"), str(tmp_path / "run.log"), str(tmp_path / "paused")
  proc = _start(workdir, "200", "--pause_at", pause_at, "--pause", "600", "--marker", marker, log=log)
  _wait_for(lambda: os.path.exists(marker), f"pause at {pause_at}", proc, log)
  proc.send_signal(signum)
  name = signal.Signals(signum).name
  _wait_for(lambda: f"{name} received" in _read(log), f"message of {name}", proc, log)
  os.remove(marker)   # ends the pause: the run goes on to its next check.
  out = _finish(proc, log)
  assert proc.returncode == 128 + int(signum), out
  assert f"interrupted by {name} before the first step; nothing saved in" in out, out
  assert not os.path.exists(os.path.join(workdir, "metrics.jsonl")) or not _losses(workdir), out
  assert _saved_steps(workdir) == [], out


def test_second_sigint_stops_at_once(tmp_path):
  workdir, log, marker = str(tmp_path / "run"), str(tmp_path / "run.log"), str(tmp_path / "paused")
  # The first batch takes 10 minutes: only the second Ctrl-C can end the run soon.
  proc = _start(workdir, "200", "--pause_at", "first_batch", "--pause", "600", "--marker", marker, log=log)
  _wait_for(lambda: os.path.exists(marker), "pause before the first batch", proc, log)
  proc.send_signal(signal.SIGINT)
  _wait_for(lambda: "press Ctrl-C again" in _read(log), "message of the first SIGINT", proc, log)
  sent = time.time()
  proc.send_signal(signal.SIGINT)
  out = _finish(proc, log, timeout=60)
  # The first signal restored the OS default action: the second ends the process, as Ctrl-C would.
  assert proc.returncode == -signal.SIGINT, out
  assert time.time() - sent < 60
  assert _saved_steps(workdir) == []


def test_run_training_stops_before_the_next_stage_and_export(tmp_path, monkeypatch):
  """A signal during the segmenter stage of 'segmenter+tracker' (here: after its last step) neither
  exports nor starts the tracker stage, and the handlers are restored afterwards."""
  from o2vis_jax import tasks
  import ml_collections
  calls = []

  def fake_train_and_evaluate(config, workdir, task, progress=True):
    del task, progress
    calls.append((config.train.task, workdir))
    with train._stop_signals() as stop:   # what the real one does: it shares run_training's handler.
      os.kill(os.getpid(), signal.SIGINT)
      # Python runs the handler in the main thread at its next check; on a loaded machine that can take
      # longer than a fixed sleep, so wait for it (bounded).
      deadline = time.monotonic() + 60
      while stop.received is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return train.TrainState(step=jnp.asarray(config.num_train_steps), params={}, opt_state=None,
                            rng=None)

  monkeypatch.setattr(train, "train_and_evaluate", fake_train_and_evaluate)
  monkeypatch.setattr(train, "export", lambda *args: calls.append("export"))
  monkeypatch.setattr(tasks, "SegmenterTask", lambda *args: None)
  monkeypatch.setattr(tasks, "TrackingTask", lambda *args: None)
  config = ml_collections.ConfigDict(dict(
      seed=0, num_train_steps=3, train=dict(task="segmenter+tracker", segmenter_steps=5,
                                            learning_rate=0.1, decay_steps=(1,))))
  handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  with pytest.raises(train.TrainingInterrupted, match="interrupted by SIGINT at step 5") as raised:
    train.run_training(config, str(tmp_path), progress=False)
  assert calls == [("segmenter", str(tmp_path / "segmenter"))]
  assert raised.value.step == 5
  assert raised.value.checkpoint_dir == str(tmp_path / "segmenter" / "checkpoints")
  assert isinstance(raised.value, KeyboardInterrupt)
  assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers


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
