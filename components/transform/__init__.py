"""TFX's Transform, decoding through tf.io.parse_example and writing at a fast gzip level."""

from components.transform.component import Transform

__all__ = ["Transform"]
