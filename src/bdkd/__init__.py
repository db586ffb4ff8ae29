"""bdkd: knowledge distillation for accurate and well-calibrated compact models."""

__version__ = "0.1.0"
