"""The MSMT Trainer: TFX's generic Trainer that also takes a FeatureSelection."""

from components.trainer.component import MSMTTrainer

__all__ = ["MSMTTrainer"]
