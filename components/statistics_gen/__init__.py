"""TFX's StatisticsGen, decoding its examples through tf.io.parse_example."""

from components.statistics_gen.component import StatisticsGen

__all__ = ["StatisticsGen"]
