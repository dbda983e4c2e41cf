"""DVIS-DAQ training (association/dvis_daq/train_step.py, loss.py): the historical matcher on hand cases,
the emergence / disappearance schedule's phases, and a short run on the tiny config that lowers the loss."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from configs import dvis_daq_tiny
from o2vis_jax import association, tasks, train
from o2vis_jax.association.dvis_daq import train_step
from shared_inputs import FixedBatch, lighten_segmenter

# Rows: 2 slot rows (0, 1) then 3 emergence rows (2, 3, 4); 3 GT.
EMERGENCE = jnp.asarray([False, False, True, True, True])
COST = jnp.asarray([[0.0, 0.0, 5.0, 1.0, 9.0],     # GT 0: cheapest on slot rows, then emergence row 3
                    [0.0, 0.0, 0.0, 0.0, 0.0],     # GT 1
                    [0.0, 0.0, 9.0, 2.0, 3.0]])    # GT 2: wants row 3 too


def test_historical_matcher_keeps_tracks_and_matches_new_gt_to_emergence_rows_only():
  # GT 1 is tracked by slot 0: it keeps row 0 whatever the cost; GT 0 and GT 2 are new: 1 + 3 < 5 + 2.
  rows = train_step.historical_matching(COST, jnp.asarray([1, -1]), jnp.asarray([True, False]),
                                        jnp.asarray([True, True, True]), EMERGENCE)
  assert rows.tolist() == [3, 0, 4]


def test_historical_matcher_absent_tracked_gt_keeps_its_row_and_absent_new_gt_is_unmatched():
  rows = train_step.historical_matching(COST, jnp.asarray([1, -1]), jnp.asarray([True, False]),
                                        jnp.asarray([True, False, False]), EMERGENCE)
  # GT 1 is absent but tracked: the pair stays (the loss masks it); GT 2 absent and new: no row.
  assert rows.tolist() == [3, 0, -1]


def test_historical_matcher_a_dead_tracks_gt_is_new_again():
  rows = train_step.historical_matching(COST, jnp.asarray([0, 2]), jnp.asarray([False, True]),
                                        jnp.asarray([True, True, True]), EMERGENCE)
  # Slot 0 is dead: GT 0 is new (emergence row 3); GT 2 stays on slot 1; GT 1 new -> the cheapest left.
  assert rows[0] == 3 and rows[2] == 1 and rows[1] in (2, 4)


def test_phases_follow_the_schedule():
  config = dvis_daq_tiny.get_config()
  config.association.dvis_daq.steps = (3,)
  method = association.get("dvis_daq")
  assert [method.phase(config, s) for s in (0, 2, 3, 9)] == ["stage2", "stage2", "stage3", "stage3"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("daq_train"))
  config = lighten_segmenter(dvis_daq_tiny.get_config())
  config.batch_size = 4   # one clip per forced host device (conftest: 4)
  config.train.clip_grad_norm = 1.0
  config.train.learning_rate = 1e-3
  batch = next(tasks.make_train_iterator(config, seed=0, workdir=workdir))
  return config, workdir, batch


def test_short_tracker_run_lowers_the_loss(setup, tmp_path):
  """Six steps on one fixed batch in stage 2 (the tracks follow the matching, so the loss is one function
  of the tracker's weights across steps, up to the selection); both branches' terms are logged."""
  config, data_workdir, batch = setup
  config = config.copy_and_resolve_references()
  config.num_train_steps = 6
  config.checkpoint_every_steps = 100
  config.train.warmup_steps = 0
  config.association.dvis_daq.steps = (100,)
  task = tasks.TrackingTask(config, data_workdir)
  task.train_iterator = lambda seed: FixedBatch(batch)
  import jax
  initial, frozen = task.init_params(jax.random.split(jax.random.PRNGKey(config.seed))[0])  # as train does
  state = train.train_and_evaluate(config, str(tmp_path), task, progress=False)
  # The slot branch reads the segmenter's learned queries, which stay the (frozen) segmenter's.
  np.testing.assert_array_equal(np.asarray(state.params["query_feat"]),
                                np.asarray(frozen["segmenter"]["predictor"]["query_feat"]))
  assert not np.allclose(np.asarray(state.params["class_embed"]["kernel"]),
                         np.asarray(initial["class_embed"]["kernel"]))
  with open(os.path.join(str(tmp_path), "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  losses = [r["loss"] for r in records]
  assert len(losses) == 6 and np.all(np.isfinite(losses))
  assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_ce_slot", "loss_mask_slot"} <= set(records[0])
  assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2]), f"loss did not fall: {losses}"
