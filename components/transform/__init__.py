"""TFX's Transform, its transformed examples written at a fast gzip level."""

from components.transform.component import Transform

__all__ = ["Transform"]
