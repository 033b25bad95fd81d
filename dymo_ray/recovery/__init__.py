"""Recovery models: generate the missing modalities of a batch from the observed ones.

Public API (multivae is imported only when a generative model is built or loaded):
    Recovery, build_recovery, save_recovery, load_recovery, load_registered_recovery,
    load_recovery_model, is_registry_uri,
    RECOVERY_NAMES, DEFAULT_RECOVERY,
    train_recovery_epoch, recovered_sample_grid, write_png.
The adapters live in `dymo_ray.recovery.multivae_adapter` and the coherence measurement in
`dymo_ray.recovery.coherence`.
"""

from dymo_ray.recovery.base import Recovery
from dymo_ray.recovery.factory import (
    DEFAULT_RECOVERY,
    RECOVERY_NAMES,
    build_recovery,
    is_registry_uri,
    load_recovery,
    load_recovery_model,
    load_registered_recovery,
    save_recovery,
)
from dymo_ray.recovery.training import recovered_sample_grid, train_recovery_epoch, write_png

__all__ = [
    "DEFAULT_RECOVERY",
    "RECOVERY_NAMES",
    "Recovery",
    "build_recovery",
    "is_registry_uri",
    "load_recovery",
    "load_recovery_model",
    "load_registered_recovery",
    "recovered_sample_grid",
    "save_recovery",
    "train_recovery_epoch",
    "write_png",
]
