r"""Trains O2VIS (trackers on a frozen segmenter, or the segmenter) on one CPU, GPUs or a TPU pod.

The tracker stage trains the config's association method (`config.association.method`, a trainable one:
`o2vis`, or `o2vis_te_only` for the T_E-only model); the training-free methods need no training.

  python scripts/train.py --config configs/synthetic_tiny.py --workdir /tmp/o2vis_tiny
  python scripts/train.py --config configs/ytvis19_r50.py --workdir DIR \
      --config.data.data_dir=/data/ytvis_2019_built --config.init_checkpoint=/ckpt/converted

Any config field can be overridden with `--config.FIELD=VALUE`. A run resumes from the latest
checkpoint in --workdir and ends by exporting the trained params to WORKDIR/export (the format of
scripts/convert_checkpoint.py, read by scripts/infer.py). Multi-host: run the same command on every host with
--coordinator_address/--num_processes/--process_id, or leave them empty where JAX's cluster
auto-detection (TPU pods, SLURM, ...) applies and pass --multihost.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from o2vis_jax import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file with get_config() (configs/*.py); fields can be overridden "
    "with --config.FIELD=VALUE.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl, TensorBoard "
                               "logs and config.json; training resumes from its latest checkpoint.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-host "
                                   "training (jax.distributed.initialize).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (hosts) in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-host run.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() with the cluster's "
                               "auto-detection (TPU pods, SLURM, ...) when no coordinator is given.")
_NO_PROGRESS = flags.DEFINE_bool("no_progress", False, "Disable the progress bar.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from o2vis_jax import config_validation
  # Everything a run reads or writes is checked before the first expensive step (the segmenter stage
  # of 'segmenter+tracker' takes hours): the whole config, the workdir, the data and init checkpoint.
  config = config_validation.validate(_CONFIG.value, training=True)
  workdir = cli.check_output_dir(_WORKDIR.value, "workdir", create=False)   # training creates it
  import jax
  if _COORDINATOR.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif _MULTIHOST.value:
    jax.distributed.initialize()
  from o2vis_jax import tasks, train
  tasks.check_data_dir(config, workdir)
  if config.init_checkpoint:
    with_tracker = config.init_tracker and config.train.task == "tracker"
    tasks.load_init_params(config.init_checkpoint, config,
                           ("segmenter", "tracker") if with_tracker else ("segmenter",))
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  exported = train.run_training(config, workdir, progress=not _NO_PROGRESS.value)
  if jax.process_index() == 0:
    print(f"trained model exported to {exported}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  cli.run(main)
