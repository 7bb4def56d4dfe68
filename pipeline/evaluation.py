"""The Evaluator's TFMA config, generated from the dataset spec.

Every task output gets AUC, binary cross-entropy, calibration, mean label and
prediction and example count, overall and per scenario slice (each level of a
scenario hierarchy, and the full path). The blessing thresholds (an AUC floor
and a no-regression bound against the latest blessed model) apply to every
task output, on the overall slice, every level of the scenario hierarchy and
every scenario slice, so a new scenario is covered without a hand edit.
"""

from typing import List

import tensorflow_model_analysis as tfma

from models.training import SERVING_SIGNATURE
from pipeline.configs import EvalThresholds
from pipeline.specs import DatasetSpec


def slicing_specs(spec: DatasetSpec) -> List[tfma.SlicingSpec]:
    columns = list(spec.scenario_columns)
    specs = [tfma.SlicingSpec()]
    specs += [tfma.SlicingSpec(feature_keys=columns[:depth]) for depth in range(1, len(columns) + 1)]
    return specs


def scenario_slicing_spec(spec: DatasetSpec) -> tfma.SlicingSpec:
    """The slice of one scenario: the full hierarchy path."""
    return tfma.SlicingSpec(feature_keys=list(spec.scenario_columns))


def eval_config(spec: DatasetSpec, thresholds: EvalThresholds) -> tfma.EvalConfig:
    tasks = spec.task_names
    auc_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": thresholds.auc_floor}),
        change_threshold=tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -thresholds.max_auc_regression}))
    # Gated: overall, every level of the scenario hierarchy and every scenario; each
    # task output separately (a MetricConfig applies per output of its MetricsSpec).
    gated_slices = slicing_specs(spec)
    metrics = [
        tfma.MetricConfig(class_name="AUC", per_slice_thresholds=[
            tfma.PerSliceMetricThreshold(slicing_specs=gated_slices, threshold=auc_threshold)]),
        tfma.MetricConfig(class_name="BinaryCrossentropy"),
        tfma.MetricConfig(class_name="Calibration"),
        tfma.MetricConfig(class_name="MeanLabel"),
        tfma.MetricConfig(class_name="MeanPrediction"),
        tfma.MetricConfig(class_name="ExampleCount"),
    ]
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name=SERVING_SIGNATURE,
                                    label_keys={t: t for t in tasks},
                                    prediction_keys={t: t for t in tasks})],
        slicing_specs=slicing_specs(spec),
        metrics_specs=[tfma.MetricsSpec(output_names=tasks, metrics=metrics)])
