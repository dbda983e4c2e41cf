"""The training loop: data-parallel over every device and host, exact resume, metrics, NaN guard.

One program for one CPU, 8 GPUs or a TPU pod slice (SPEC 5):
- a 1-D `data` mesh over `jax.devices()` (all hosts); the global batch is sharded along it;
- the per-device loss runs inside `jax.shard_map` (it may call host matchers through `pure_callback`,
  which a globally sharded `jit` cannot do on several processes); gradients and metrics are `pmean`-ed;
- each example gets its own PRNG key, derived from (seed, step, global example index), so the loss of a
  global batch does not depend on how many devices share it;
- an orbax `CheckpointManager` keeps params, optimiser state, step, RNG and the grain iterator state,
  every `config.checkpoint_every_steps` and at the end; a restart resumes from the latest checkpoint,
  says so in one line ("Resumed from step N (WORKDIR/checkpoints)") and continues exactly;
- metrics go to `WORKDIR/metrics.jsonl` (one JSON object per logged step) and TensorBoard;
- a non-finite loss stops training with an error naming the step, without saving that state.

Stopping (Ctrl-C = SIGINT, or SIGTERM from a cluster's pre-emption): `run_training` and
`train_and_evaluate` handle both signals for their whole duration (data preparation, initialisation,
restore, compilation, every stage of 'segmenter+tracker'), in the main thread. The first signal prints a
line on stderr and asks training to stop at the next step boundary: the state after that step is saved
(the usual checkpoint), and `TrainingInterrupted` is raised. A signal before the first step stops the run
at the first check (after the data iterator is built, after a restore, after the first batch is read,
before the first compilation) with nothing new to save: a fresh run leaves no checkpoint, a resumed
one keeps its latest. `run_training` neither exports nor starts the next stage once stopped. A second
signal ends the process at once without saving (the OS default action is restored by the first), so a
kill during a save is as safe as any kill: the latest complete checkpoint is what a restart resumes from.
`TrainingInterrupted` is a `KeyboardInterrupt` (no `except Exception` swallows it) whose message is the
line to show the user, e.g. "interrupted by SIGINT at step 12; checkpoint saved in WORKDIR/checkpoints;
run the same command to resume"; scripts exit with its `exit_code` (128 + the signal's number, as a shell
reports a process killed by it: 130 for SIGINT, 143 for SIGTERM; `o2vis_jax.cli.run`). Several processes
agree on the stop at every step boundary, so all of them save the same step.

What is trained is a `Task` (see `o2vis_jax/tasks.py`): it owns the model, the loss and the data, and
declares its training phases (static strings; one compiled step per phase).

`run_training` at the bottom is the whole run a newcomer reads top to bottom: one stage ('tracker',
'segmenter' or 'refiner'), or the staged 'segmenter+tracker' run from scratch, and the export of the result.
"""

import contextlib
import json
import os
import shutil
import signal
import time
from typing import Any, Callable, Dict, Optional, Protocol, Tuple

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from o2vis_jax import optimizer as optimizer_lib

DATA_AXIS = "data"


class Task(Protocol):
  """What the trainer needs from a model + loss + data."""
  phases: Tuple[str, ...]   # the training phases (static); one compiled train step per phase.

  def init_params(self, rng: jax.Array) -> Tuple[Any, Any]:
    """Returns (trainable_params, frozen_params)."""

  def phase(self, step: int) -> str:
    """The phase (one of `phases`) of optimiser step `step`."""

  def loss(self, trainable: Any, frozen: Any, batch: Dict[str, jax.Array], rngs: jax.Array,
           step: jax.Array, phase: str) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Mean loss over the local examples of `batch` (one device's shard) and scalar metrics.

    Runs inside `shard_map` over the `data` axis; `rngs` has one key per local example. A loss
    that needs global normalisers (e.g. the number of GT masks over all devices) may `psum` over
    DATA_AXIS. `phase` is static.
    """

  def train_iterator(self, seed: int) -> Any:
    """A grain iterator (with get_state / set_state) of this process's local batches (numpy)."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 PRNG key data.


def make_mesh(devices=None) -> Mesh:
  """A 1-D `data` mesh over `devices` (default: every device of every process)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA_AXIS,))


def make_train_step(task: Task, tx: optax.GradientTransformation, mesh: Mesh,
                    global_batch_size: int, schedule: Optional[optax.Schedule] = None,
                    phase: Optional[str] = None) -> Callable:
  """jit(state, frozen, batch) -> (state, metrics): loss and grads in shard_map, update replicated.

  `phase` (static, one of `task.phases`; default the last) is passed to `task.loss(..., phase=phase)`:
  one compiled step per phase (e.g. O2VIS's early training, Eq. 9, then the main phase).
  """
  phase = task.phases[-1] if phase is None else phase
  if phase not in task.phases:
    raise ValueError(f"train: phase {phase!r} is not one of the task's phases {task.phases}")

  def per_device(params, frozen, batch, rngs, step):
    def loss_fn(p):
      return task.loss(p, frozen, batch, rngs, step, phase=phase)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grads = jax.lax.pmean(grads, DATA_AXIS)
    metrics = dict(metrics, loss=loss)
    metrics = jax.lax.pmean(metrics, DATA_AXIS)
    return grads, metrics

  sharded = jax.shard_map(
      per_device, mesh=mesh,
      in_specs=(P(), P(), P(DATA_AXIS), P(DATA_AXIS), P()),
      out_specs=(P(), P()), check_vma=False)

  @jax.jit
  def train_step(state: TrainState, frozen, batch):
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    rngs = jax.random.key_data(jax.random.split(step_key, global_batch_size))
    grads, metrics = sharded(state.params, frozen, batch, rngs, state.step)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics["grad_norm"] = optax.tree.norm(grads)
    if schedule is not None:
      metrics["learning_rate"] = schedule(state.step)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def _global_batch(local_batch: Dict[str, np.ndarray], mesh: Mesh) -> Dict[str, jax.Array]:
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
  """SIGINT or SIGTERM stopped training (see the module docstring); `str(e)` is the line for the user.

  A KeyboardInterrupt so that `except Exception` does not swallow it and a command line that reports
  Ctrl-C as "interrupted" reports this too; `exit_code` = 128 + the signal's number (130 SIGINT, 143 SIGTERM).
  """

  def __init__(self, message: str, signal_name: str, step: int, checkpoint_dir: str):
    super().__init__(message)
    self.signal_name = signal_name
    self.step = step                      # the step training can resume from (0: nothing saved).
    self.checkpoint_dir = checkpoint_dir

  @property
  def exit_code(self) -> int:
    return 128 + int(signal.Signals[self.signal_name])


def _interrupted(signal_name: str, step: Optional[int], checkpoint_dir: str) -> TrainingInterrupted:
  """`step`: the latest checkpoint's (None: none yet)."""
  if step is None:
    message = (f"interrupted by {signal_name} before the first step; nothing saved in {checkpoint_dir}; "
               "run the same command to start again")
  else:
    message = (f"interrupted by {signal_name} at step {step}; checkpoint saved in {checkpoint_dir}; "
               "run the same command to resume")
  return TrainingInterrupted(message, signal_name, step or 0, checkpoint_dir)


class _StopSignals:
  """SIGINT and SIGTERM set `received` (the signal's name); training polls it at step boundaries.

  A real `signal.signal` handler, so that Ctrl-C never becomes a KeyboardInterrupt raised wherever the
  main thread happens to be: inside JAX's GC callback Python only prints "Exception ignored" and training
  went on. The first signal restores the OS default action of both, so that a second one ends the
  process at once, even in the middle of a long compilation where no Python handler could run.
  """

  def __init__(self):
    self.received: Optional[str] = None
    self._previous = {}

  def install(self) -> bool:
    try:
      for signum in _STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:   # started ignoring it (`nohup`, `&`): keep so.
          self._previous[signum] = signal.signal(signum, self._handle)
    except ValueError:  # not the main thread: no handler (Python's rule), training still works.
      self.uninstall()
      return False
    return True

  def uninstall(self):
    for signum, previous in self._previous.items():
      signal.signal(signum, signal.SIG_DFL if previous is None else previous)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    for handled in self._previous:
      signal.signal(handled, signal.SIG_DFL)
    name = signal.Signals(signum).name
    self.received = self.received or name
    again = "press Ctrl-C again" if signum == signal.SIGINT else f"send {name} again"
    # os.write, not print: a handler may run in the middle of a write to sys.stderr (the progress bar).
    os.write(2, f"\n{name} received: stopping at the next step boundary, with a checkpoint if a step has "
                f"run; {again} to stop at once without saving.\n".encode())


_active_stop: Optional[_StopSignals] = None


@contextlib.contextmanager
def _stop_signals():
  """The handlers of `_StopSignals` for the duration; nested uses (a stage of `run_training`) share the
  outer one, so that a signal in one stage is still seen after it."""
  global _active_stop
  if _active_stop is not None:
    yield _active_stop
    return
  stop = _StopSignals()
  if not stop.install():
    yield stop
    return
  _active_stop = stop
  try:
    yield stop
  finally:
    _active_stop = None
    stop.uninstall()


def _stop_requested(stop: _StopSignals) -> Optional[str]:
  """The signal that asked to stop, agreed by every process: all must save the same step (orbax saves
  collectively), though a cluster's SIGTERM reaches the hosts at different steps."""
  if jax.process_count() == 1:
    return stop.received
  from jax.experimental import multihost_utils
  code = int(signal.Signals[stop.received]) if stop.received else 0
  code = int(np.max(multihost_utils.process_allgather(np.int32(code))))
  return signal.Signals(code).name if code else None


class NonFiniteLossError(FloatingPointError):
  pass


class _MetricWriter:
  """metrics.jsonl (appended, so a resumed run continues the file) + TensorBoard, process 0 only."""

  def __init__(self, workdir: str, enabled: bool):
    self.enabled = enabled
    self._tb = None
    if enabled:
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:
        logging.warning("tensorboardX is not installed: metrics go to metrics.jsonl only.")

  def write(self, step: int, metrics: Dict[str, float]):
    if not self.enabled:
      return
    record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(k, float(v), int(step))

  def close(self):
    if self.enabled:
      self._jsonl.close()
      if self._tb is not None:
        self._tb.close()


def _checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def _checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=int(config.get("max_checkpoints_to_keep", 3)),
                                         create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(_checkpoint_dir(workdir), options=options)


def _data_state_path(workdir: str, step: int) -> str:
  return os.path.join(workdir, "data_state", str(step), f"process_{jax.process_index()}.json")


def _save(manager: ocp.CheckpointManager, workdir: str, state: TrainState, data_iterator) -> None:
  """Data-iterator state first (one file per process), then the orbax checkpoint that makes the
  step visible: a kill in between leaves no checkpoint without its data state."""
  step = int(jax.device_get(state.step))
  data_path = _data_state_path(workdir, step)
  os.makedirs(os.path.dirname(data_path), exist_ok=True)
  data_state = data_iterator.get_state()
  if isinstance(data_state, bytes):
    data_state = {"bytes": data_state.decode()}
  with open(data_path + ".tmp", "w") as f:
    json.dump(data_state, f)
  os.replace(data_path + ".tmp", data_path)
  manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
  manager.wait_until_finished()


def _restore(manager: ocp.CheckpointManager, workdir: str, state: TrainState, data_iterator) -> TrainState:
  step = manager.latest_step()
  data_path = _data_state_path(workdir, step)
  try:
    with open(data_path) as f:
      data_state = json.load(f)
  except (OSError, ValueError) as e:
    raise RuntimeError(f"checkpoint step {step} in {manager.directory} has no readable data-iterator "
                       f"state {data_path}: {e}") from e
  if set(data_state) == {"bytes"}:
    data_state = data_state["bytes"].encode()
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
  except Exception as e:  # orbax raises several types for a damaged or mismatched checkpoint.
    raise RuntimeError(f"could not restore checkpoint step {step} from {manager.directory}: {e}") from e
  data_iterator.set_state(data_state)
  # A warning, so that it shows without absl's verbosity: resuming an old workdir may be a surprise.
  (logging.warning if jax.process_index() == 0 else logging.info)(
      "Resumed from step %d (%s)", step, manager.directory)
  return restored.state


def initial_state(task: Task, config: ml_collections.ConfigDict
                  ) -> Tuple[TrainState, Any, optax.GradientTransformation]:
  """(state at step 0, frozen params, optimiser) from `config.seed`."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  trainable, frozen = task.init_params(init_rng)
  tx = optimizer_lib.create_optimizer(config.train, trainable, getattr(task, "frozen_subtrees", ()))
  state = TrainState(step=jnp.asarray(0, jnp.int32), params=trainable, opt_state=tx.init(trainable),
                     rng=train_rng)
  return state, frozen, tx


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, task: Task,
                       progress: bool = True) -> TrainState:
  """Trains `task` to `config.num_train_steps`, resuming from `workdir` if it holds a checkpoint.

  Raises `TrainingInterrupted` when SIGINT or SIGTERM stopped it (see the module docstring).
  """
  with _stop_signals() as stop:
    return _train_and_evaluate(config, workdir, task, progress, stop)


def _train_and_evaluate(config, workdir, task, progress, stop: _StopSignals) -> TrainState:
  os.makedirs(workdir, exist_ok=True)
  mesh = make_mesh()
  num_devices = mesh.devices.size
  if config.batch_size % num_devices:
    raise ValueError(f"config.batch_size={config.batch_size} must be divisible by the number of devices "
                     f"({num_devices}) so that every device gets the same number of clips.")
  if config.batch_size % jax.process_count():
    raise ValueError(f"config.batch_size={config.batch_size} must be divisible by the number of processes "
                     f"({jax.process_count()}).")
  is_main = jax.process_index() == 0
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))

  manager = _checkpoint_manager(workdir, config)
  writer = bar = None

  def stop_if_requested():
    """Before a step has run there is nothing new to save: stop with the checkpoints as they are."""
    signal_name = _stop_requested(stop)
    if signal_name:
      raise _interrupted(signal_name, manager.latest_step(), _checkpoint_dir(workdir))

  try:
    stop_if_requested()   # a signal between the stages of run_training.
    state, frozen, tx = initial_state(task, config)
    replicated = NamedSharding(mesh, P())
    frozen = jax.device_put(frozen, replicated)
    data_iterator = task.train_iterator(config.seed)   # may generate the synthetic data set first.
    stop_if_requested()
    if manager.latest_step() is not None:
      state = _restore(manager, workdir, state, data_iterator)
    state = jax.device_put(state, replicated)
    stop_if_requested()
    schedule = optimizer_lib.learning_rate_schedule(config.train)
    train_steps = {}

    def train_step_for(step):
      phase = task.phase(step)
      if phase not in train_steps:
        train_steps[phase] = make_train_step(task, tx, mesh, config.batch_size, schedule, phase)
      return train_steps[phase]

    writer = _MetricWriter(workdir, enabled=is_main)
    start_step = int(jax.device_get(state.step))
    total = int(config.num_train_steps)
    if progress and is_main:
      from tqdm import tqdm
      bar = tqdm(total=total, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
    step = start_step
    window_start, window_steps = time.time(), 0
    while step < total:
      local_batch = next(data_iterator)
      if step == start_step:
        stop_if_requested()   # before the first compilation; the batch just read was never saved.
      new_state, metrics = train_step_for(step)(state, frozen, _global_batch(local_batch, mesh))
      loss = float(jax.device_get(metrics["loss"]))
      grad_norm = float(jax.device_get(metrics.get("grad_norm", 0.0)))
      if not (np.isfinite(loss) and np.isfinite(grad_norm)):
        what = f"loss {loss}" if not np.isfinite(loss) else f"gradient (norm {grad_norm}; loss {loss:.4f})"
        raise NonFiniteLossError(
            f"non-finite {what} at step {step + 1}; stopped without saving this state. "
            f"The last good checkpoint (step {manager.latest_step()}) is kept in {workdir}/checkpoints.")
      state, step = new_state, step + 1
      window_steps += 1
      if bar is not None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
      if step % config.log_every_steps == 0 or step == total:
        host_metrics = jax.device_get(metrics)
        elapsed = time.time() - window_start
        host_metrics["steps_per_sec"] = window_steps / max(elapsed, 1e-9)
        writer.write(step, host_metrics)
        window_start, window_steps = time.time(), 0
      signal_name = _stop_requested(stop)
      if step % config.checkpoint_every_steps == 0 or step == total or signal_name:
        _save(manager, workdir, state, data_iterator)
      if signal_name:
        raise _interrupted(signal_name, step, _checkpoint_dir(workdir))
  finally:
    if bar is not None:
      bar.close()
    if writer is not None:
      writer.close()
    manager.close()
  return state


# --------------------------------------------------------------------------------------------------
# A whole run: stages and export.

def export(directory: str, config: ml_collections.ConfigDict, params: Dict[str, Any]) -> str:
  """Writes params ({'segmenter', 'tracker'?, 'refiner'?}) + config as a converted-checkpoint directory
  (the format of scripts/convert_checkpoint.py), replacing an older export only once the new one is
  complete."""
  from o2vis_jax.checkpoint_conversion import save_converted
  directory = os.path.abspath(directory)
  staging = directory + ".incomplete"
  shutil.rmtree(staging, ignore_errors=True)
  save_converted(staging, config, jax.device_get(params))
  if os.path.exists(directory):
    shutil.rmtree(directory)
  os.replace(staging, directory)
  return directory


def _stage_config(config, task: str, **train_overrides) -> ml_collections.ConfigDict:
  stage = config.copy_and_resolve_references()
  stage.train.task = task
  for key, value in train_overrides.items():
    if key == "num_train_steps":
      stage.num_train_steps = value
    else:
      stage.train[key] = value
  return stage


def run_training(config: ml_collections.ConfigDict, workdir: str, progress: bool = True) -> str:
  """Runs `config.train.task` in `workdir` and exports the result to WORKDIR/export; returns its path.

  'segmenter' / 'tracker' / 'refiner': one stage ('refiner' exports {'segmenter', 'tracker', 'refiner'}:
  the frozen online model of `config.init_checkpoint` and the trained offline refiner, with the config and
  its `refiner` section, for `scripts/infer.py --offline`). 'segmenter+tracker' (training from scratch,
  SPEC 6 then 5): the segmenter for `train.segmenter_steps` in WORKDIR/segmenter (exported to
  WORKDIR/segmenter/export), then the association method (`config.association.method`) on it for
  `num_train_steps` in WORKDIR/tracker.
  Each stage resumes from its checkpoints. SIGINT / SIGTERM at any point raise `TrainingInterrupted`
  (module docstring) before the next export or stage. The config is validated first
  (`config_validation.validate`), so a wrong value fails before any data is generated or step is run.
  """
  from o2vis_jax import config_validation
  config_validation.validate(config, training=True)
  with _stop_signals() as stop:
    return _run_training(config, workdir, progress, stop)


def _run_training(config, workdir, progress, stop: _StopSignals) -> str:
  from o2vis_jax import tasks  # tasks.py imports DATA_AXIS from here.

  def stage(stage_config, stage_workdir, task) -> TrainState:
    state = train_and_evaluate(stage_config, stage_workdir, task, progress=progress)
    signal_name = _stop_requested(stop)
    if signal_name:   # came after the last step's boundary: the stage is complete, but stop as asked.
      raise _interrupted(signal_name, int(jax.device_get(state.step)) or None,
                         _checkpoint_dir(stage_workdir))
    return state

  task_name = config.train.task
  if task_name == "segmenter+tracker":
    t = config.train
    seg_config = _stage_config(config, "segmenter", num_train_steps=t.segmenter_steps,
                               learning_rate=t.get("segmenter_learning_rate", t.learning_rate),
                               decay_steps=t.get("segmenter_decay_steps", t.decay_steps))
    seg_task = tasks.SegmenterTask(seg_config, workdir)
    seg_state = stage(seg_config, os.path.join(workdir, "segmenter"), seg_task)
    seg_export = export(os.path.join(workdir, "segmenter", "export"), seg_config,
                        seg_task.export_params(seg_state.params))
    tracker_config = _stage_config(config, "tracker")
    tracker_config.init_checkpoint = seg_export
    tracker_config.init_tracker = False
    state = stage(tracker_config, os.path.join(workdir, "tracker"),
                  tasks.TrackingTask(tracker_config, workdir))
    params = {"segmenter": tasks.load_init_params(seg_export)["segmenter"], "tracker": state.params}
    return export(os.path.join(workdir, "export"), tracker_config, params)
  task = tasks.build_task(config, workdir)
  state = stage(config, workdir, task)
  if task_name == "segmenter":
    params = task.export_params(state.params)
  elif task_name == "refiner":   # the frozen online model as loaded, plus the trained refiner.
    frozen = task.init_params(jax.random.PRNGKey(config.seed))[1]
    params = {"segmenter": frozen["segmenter"], "tracker": frozen["tracker"], "refiner": state.params}
  else:
    frozen = task.init_params(jax.random.PRNGKey(config.seed))[1]
    params = {"segmenter": frozen["segmenter"], "tracker": state.params}
  return export(os.path.join(workdir, "export"), config, params)
