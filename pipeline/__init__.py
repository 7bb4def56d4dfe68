"""Pipeline definition, specs, runners and the `msmt` command line."""

import os

# Set before anything imports TensorFlow: TFX 1.16 expects Keras 2 (tf_keras).
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
