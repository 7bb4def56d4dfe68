"""Custom TFX components: the spec-driven ExampleGen executor, Transform on a fast-gzip
Beam pipeline, FeatureSelector, MSMT Trainer."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
