"""TFX's Evaluator, decoding its examples through tf.io.parse_example."""

from components.evaluator.component import Evaluator

__all__ = ["Evaluator"]
