"""A small least-squares Task for testing the trainer's mechanics (sharding, resume, SIGINT / SIGTERM,
multi-process, NaN guard) without the cost of compiling the O2VIS model."""

import os
import time

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

DIM = 4
GRADIENT_NAN_MARK = 12345.0   # a target value that marks the example of `nan_gradient_at_example`.


def toy_config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(dict(
      seed=0, batch_size=4, num_train_steps=6, checkpoint_every_steps=2, log_every_steps=1,
      train=dict(learning_rate=0.3, weight_decay=0.0, warmup_steps=0, warmup_factor=1.0,
                 decay_steps=(4,), decay_factor=0.5, clip_grad_norm=10.0, backbone_lr_multiplier=1.0)))
  config.update(overrides)
  return config


class _SlicedBatches(grain.transforms.Map):
  """Process p takes rows [p*L, (p+1)*L) of each global batch, so a global batch is the same
  whatever the number of processes."""

  def __init__(self, start, stop):
    self.start, self.stop = start, stop

  def map(self, batch):
    return {k: v[self.start:self.stop] for k, v in batch.items()}


class _SlowIterator:
  """Sleeps in the caller's (the training loop's) thread before each batch, so that a run is slow at a
  known point; grain's own threads would read ahead and hide a sleep in a `map`."""

  def __init__(self, inner, seconds, first_batch_pause=0.0, marker=None):
    self.inner, self.seconds = inner, seconds
    self.first_batch_pause, self.marker = first_batch_pause, marker
    self.first = True

  def __iter__(self):
    return self

  def __next__(self):
    if self.first:
      self.first = False
      _pause(self.first_batch_pause, self.marker)
    time.sleep(self.seconds)
    return next(self.inner)

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)


def _pause(seconds, marker):
  """Creates `marker` (the tests' sign that the run got here), then sleeps `seconds` or until the test
  removes `marker`: a test sends its signal and then lets the run go on, however slow the machine."""
  if not marker:
    time.sleep(seconds)
    return
  open(marker, "w").close()
  deadline = time.time() + seconds
  while time.time() < deadline and os.path.exists(marker):
    time.sleep(0.02)


class ToyTask:
  """loss = mean over examples of (x.w - y + 0.01 * noise(example key))^2 (+ NaN where y is NaN)."""
  phases = ("main",)

  def __init__(self, config, nan_at_example=None, sleep=0.0, pause_at=None, pause=0.0, marker=None,
               nan_gradient_at_example=None):
    """`sleep`: seconds before each batch. `pause_at` ('prepare': in `train_iterator`, as while a data
    set is generated; 'first_batch': before the first batch) creates `marker`, then sleeps `pause`
    seconds or until `marker` is removed."""
    if pause_at not in (None, "prepare", "first_batch"):
      raise ValueError(f"ToyTask: pause_at={pause_at!r}; expected None, 'prepare' or 'first_batch'")
    self.config = config
    self.nan_at_example = nan_at_example
    # The loss stays finite, its gradient is NaN (sqrt at 0 times 0) on the batch holding this example.
    self.nan_gradient_at_example = nan_gradient_at_example
    self.sleep = sleep
    self.pause_at, self.pause, self.marker = pause_at, pause, marker

  def init_params(self, rng):
    return {"w": jax.random.normal(rng, (DIM,))}, {"scale": jnp.asarray(2.0)}

  def phase(self, step):
    del step
    return "main"

  def loss(self, trainable, frozen, batch, rngs, step, phase):
    del step, phase
    noise = jax.vmap(lambda k: jax.random.normal(jax.random.wrap_key_data(k), ()))(rngs)
    residual = batch["x"] @ trainable["w"] * frozen["scale"] - batch["y"] + 0.01 * noise
    loss = jnp.mean(residual ** 2)
    if self.nan_gradient_at_example is not None:
      marked = jnp.any(batch["y"] == GRADIENT_NAN_MARK)
      offset = jnp.where(marked, 0.0, 1.0)   # sqrt at 1 elsewhere: value 0 added, gradient 0.
      loss = loss + jnp.sqrt(offset + 0.0 * jnp.sum(trainable["w"])) - offset
    return loss, {"mean_residual": jnp.mean(residual)}

  def train_iterator(self, seed):
    if self.pause_at == "prepare":
      _pause(self.pause, self.marker)
    rng = np.random.default_rng(123)
    x = rng.normal(size=(64, DIM)).astype(np.float32)
    y = (x @ np.arange(1, DIM + 1, dtype=np.float32)).astype(np.float32)
    if self.nan_at_example is not None:
      y[self.nan_at_example] = np.nan
    if self.nan_gradient_at_example is not None:
      y[self.nan_gradient_at_example] = GRADIENT_NAN_MARK
    records = [{"x": x[i], "y": y[i]} for i in range(len(x))]
    local = self.config.batch_size // jax.process_count()
    start = jax.process_index() * local
    ds = (grain.MapDataset.source(records).shuffle(seed=seed).repeat()
          .batch(self.config.batch_size).map(_SlicedBatches(start, start + local)))
    iterator = iter(ds.to_iter_dataset())
    if self.sleep or self.pause_at == "first_batch":
      first_batch_pause = self.pause if self.pause_at == "first_batch" else 0.0
      iterator = _SlowIterator(iterator, self.sleep, first_batch_pause, self.marker)
    return iterator
