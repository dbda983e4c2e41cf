"""Constants of the YouTube-VIS / OVIS evaluation protocol (SPEC section 8).

Values as in the official evaluators (youtubevos/cocoapi `ytvoseval.py`, OVIS `oviseval.py`):
* IoU thresholds 0.50:0.05:0.95 and recall thresholds 0:0.01:1, built with `np.linspace` so that
  the thresholds are bit-identical to the official ones (0.75 must be found by `==`).
* Area ranges on an object's mean non-zero per-frame area, bounds inclusive on both sides:
  all [0, 1e10], small [0, 128^2], medium [128^2, 256^2], large [256^2, 1e10]. (The official
  `Params.areaRng` uses these 128/256 bounds, not COCO's 32/96; an area of exactly 128^2 is
  both small and medium.)
* Occlusion ranges (OVIS) on an object's occlusion score, inclusive: all [0, 1], light [0, 0.25],
  medium [0.25, 0.5], heavy [0.5, 1]; per-frame labels score 0 / 0.25 / 0.75.
* maxDets 1, 10, 100 per (video, category).
"""

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = (1, 10, 100)

AREA_RANGES = {
    "all": (0.0, 1e5**2),
    "small": (0.0, 128.0**2),
    "medium": (128.0**2, 256.0**2),
    "large": (256.0**2, 1e5**2),
}
OCCLUSION_RANGES = {
    "all": (0.0, 1.0),
    "light": (0.0, 0.25),
    "medium": (0.25, 0.5),
    "heavy": (0.5, 1.0),
}
# OVIS per-frame labels in the annotations' `occlusion` lists (null where the object is absent).
OCCLUSION_LABEL_SCORES = {"no_occlusion": 0.0, "slight_occlusion": 0.25, "severe_occlusion": 0.75}

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
OCCLUSION_METRIC_NAMES = ("AP_light", "AP_medium", "AP_heavy",
                          "AR_light", "AR_medium", "AR_heavy")
