"""The ablations of the paper's Table 3 (R50) as config variants:

  python scripts/train.py --config configs/ablations_r50.py:VARIANT[,DATASET] --workdir DIR
      --config.init_checkpoint=CONVERTED --config.data.data_dir=BUILT_DATASET   (one command line)
  python scripts/infer.py --config configs/ablations_r50.py:a1_none_hungarian ...  (rows 1-5)

DATASET: ytvis19 (default) | ytvis21 | ytvis22 | ovis (configs/r50_common.py, the Table 1 settings).

| variant               | Table  | model (config.association.method: its section's switches)             |
|-----------------------|--------|-----------------------------------------------------------------------|
| a1_none_hungarian     | 3(a) 1 | no memory (MinVIS) + Hungarian (training_free: memory=none)           |
| a2_sim_hungarian      | 3(a) 2 | similarity memory + Hungarian (training_free: similarity)             |
| a3_momentum_hungarian | 3(a) 3 | momentum (0.99) memory + Hungarian (training_free: momentum)          |
| a4_iom_hungarian      | 3(a) 4 | IOM + Hungarian (training_free: iom, matching=hungarian)              |
| a5_iom_ohm            | 3(a) 5 | IOM + OHM (training_free: iom, matching=ohm)                          |
| a6_te_only            | 3(a) 6 | + T_E: the T_E-only model (o2vis_te_only: 6 layers, early always)     |
| a7_full               | 3(a) 7 | + T_A: the full O2VIS (o2vis: anchor=adaptive, early on)              |
| anchor_current        | 3(b)   | anchor = matched current query (o2vis: anchor=current, early on)      |
| anchor_memory         | 3(b)   | anchor = memory (o2vis: anchor=memory, early on)                      |
| anchor_adaptive       | 3(b)   | adaptive anchor, = a7_full (o2vis: anchor=adaptive, early on)         |
| early_off             | 3(c)   | no early training, the released configs (o2vis: early_matching=False) |
| early_on              | 3(c)   | early training, Eq. 9, 14 (o2vis: early_matching=True)                |

Rows 1-5 set `config.association.method = 'training_free'` and `config.training_free.{memory, matching,
top_k}`; a6_te_only runs `o2vis_te_only`, which reads O2VIS's section `config.tracker`; the rest run
`o2vis` with the `config.tracker` switches shown.

a6_te_only trains 40k steps with the lr step at 28k. Rows 1-5 need no training (segmenter outputs only;
top-10 as the reference MinVIS path). The paper's full-model numbers (55.7 on YTVIS19 in 3(a) row 7,
3(b) adaptive, 3(c) "with") use early training, which no released reference config enables: a7_full and
the anchors turn it on (first half of the steps, the reference's MAX_ITER // 2); `early_off` is the
released `LOMM_Online_R50.yaml` behaviour (= configs/<dataset>_r50.py).
"""

from configs import r50_common

# variant: (config.training_free.memory, config.training_free.matching)
_BASELINES = {
    "a1_none_hungarian": ("none", "hungarian"),
    "a2_sim_hungarian": ("similarity", "hungarian"),
    "a3_momentum_hungarian": ("momentum", "hungarian"),
    "a4_iom_hungarian": ("iom", "hungarian"),
    "a5_iom_ohm": ("iom", "ohm"),
}
# variant: config.tracker overrides (o2vis, or o2vis_te_only for a6_te_only)
_TRAINED = {
    "a6_te_only": dict(num_layers=6, early_matching=True),
    "a7_full": dict(anchor="adaptive", early_matching=True),
    "anchor_current": dict(anchor="current", early_matching=True),
    "anchor_memory": dict(anchor="memory", early_matching=True),
    "anchor_adaptive": dict(anchor="adaptive", early_matching=True),
    "early_off": dict(early_matching=False),
    "early_on": dict(early_matching=True),
}
VARIANTS = tuple(_BASELINES) + tuple(_TRAINED)
DATASETS = tuple(r50_common.DATASETS)


def get_config(variant: str = "a7_full"):
  name, _, dataset = variant.partition(",")
  dataset = dataset or "ytvis19"
  if name not in VARIANTS:
    raise ValueError(f"configs/ablations_r50.py: variant must be one of {VARIANTS} (optionally "
                     f"',DATASET' with DATASET in {DATASETS}), got {variant!r}")
  config = r50_common.tracker_training_config(dataset)
  # The base config holds every method's section, so selecting a method is one field (not
  # `association.with_method`, whose resolved copy drops the None-valued fields' types, which
  # `--config.tracker.anchor=...` overrides need).
  if name in _BASELINES:
    config.association.method = "training_free"
    config.training_free.memory, config.training_free.matching = _BASELINES[name]
    config.training_free.top_k = 10
    return config
  config.association.method = "o2vis_te_only" if name == "a6_te_only" else "o2vis"
  for key, value in _TRAINED[name].items():
    config.tracker[key] = value
  config.train.early_training_fraction = 0.5
  if name == "a6_te_only":
    # LOMM_Online_R50_E.yaml: 40k iterations, step at 28k; LOMM_online_E always matches early.
    config.num_train_steps = 40000
    config.train.decay_steps = (28000,)
    config.train.early_training_fraction = 1.0
  return config
