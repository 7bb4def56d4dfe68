"""FeatureSelector: a TFX component that scores fields per (scenario, task) and selects them."""

from components.feature_selector.artifact import FeatureSelection
from components.feature_selector.component import FeatureSelector

__all__ = ["FeatureSelection", "FeatureSelector"]
