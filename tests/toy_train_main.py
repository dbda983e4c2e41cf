"""Runs the trainer on the toy task in a subprocess (multi-process, SIGINT and SIGTERM tests).

usage: python tests/toy_train_main.py WORKDIR NUM_STEPS [--sleep S] [--checkpoint_every K]
           [--pause_at {prepare,first_batch} --pause S --marker PATH]
           [--coordinator ADDR --num_processes N --process_id I]

Like scripts/train.py (through o2vis_jax.cli.run), an interrupted run prints the trainer's one line on
stderr and exits with its exit_code: 130 after SIGINT, 143 after SIGTERM.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("num_steps", type=int)
  parser.add_argument("--sleep", type=float, default=0.0, help="seconds before each batch")
  parser.add_argument("--checkpoint_every", type=int, default=2)
  parser.add_argument("--pause_at", choices=("prepare", "first_batch"),
                      help="where to create --marker and sleep --pause seconds (tests/toy_task.py)")
  parser.add_argument("--pause", type=float, default=0.0)
  parser.add_argument("--marker")
  parser.add_argument("--coordinator")
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  args = parser.parse_args()
  import jax
  if args.coordinator:
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  from o2vis_jax import train
  import toy_task
  config = toy_task.toy_config(num_train_steps=args.num_steps,
                               checkpoint_every_steps=args.checkpoint_every)
  task = toy_task.ToyTask(config, sleep=args.sleep, pause_at=args.pause_at, pause=args.pause,
                          marker=args.marker)
  try:
    state = train.train_and_evaluate(config, args.workdir, task, progress=False)
  except train.TrainingInterrupted as e:
    print(e, file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
  import numpy as np
  if jax.process_index() == 0:
    np.save(os.path.join(args.workdir, "final_w.npy"), np.asarray(jax.device_get(state.params["w"])))
  print("finished at step", int(jax.device_get(state.step)), flush=True)


if __name__ == "__main__":
  main()
