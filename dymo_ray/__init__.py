"""dymo_ray: DyMo (inference-time dynamic modality selection) on Ray, with MLflow tracking."""

__version__ = "0.1.0"
