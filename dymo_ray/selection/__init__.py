"""DyMo selection: calibration statistics, the MTIR reward and the batched greedy selector."""

from dymo_ray.selection.calibration import (
    CalibrationStats,
    backbone_fingerprint,
    compute_calibration_stats,
)
from dymo_ray.selection.reward import (
    CALIBRATION_FORMS,
    METRICS,
    calibration_factor,
    ics,
    mtir_reward,
    prototype_confidence,
    prototype_distance,
)
from dymo_ray.selection.selector import (
    SelectionConfig,
    SelectionResult,
    StepTrace,
    discard_predict,
    impute_all_predict,
    select,
)

__all__ = [
    "CALIBRATION_FORMS",
    "METRICS",
    "CalibrationStats",
    "SelectionConfig",
    "SelectionResult",
    "StepTrace",
    "backbone_fingerprint",
    "calibration_factor",
    "compute_calibration_stats",
    "discard_predict",
    "ics",
    "impute_all_predict",
    "mtir_reward",
    "prototype_confidence",
    "prototype_distance",
    "select",
]
