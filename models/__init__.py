"""The user code TFX loads: features, preprocessing, the MSMT Keras models and run_fn."""

import os

# TFX 1.16's Trainer and Evaluator and tensorflow-recommenders expect Keras 2.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
