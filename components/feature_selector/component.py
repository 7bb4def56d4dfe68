"""FeatureSelector component spec and class."""

import json
from typing import Any, Dict, Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.feature_selector import executor
from components.feature_selector.artifact import FeatureSelection


class FeatureSelectorSpec(ComponentSpec):
    PARAMETERS = {
        "dataset_spec": ExecutionParameter(type=str),
        "method": ExecutionParameter(type=str),
        "params": ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        "transformed_examples": ChannelParameter(type=standard_artifacts.Examples),
        "transform_graph": ChannelParameter(type=standard_artifacts.TransformGraph),
        "anomalies": ChannelParameter(type=standard_artifacts.ExampleAnomalies, optional=True),
    }
    OUTPUTS = {"feature_selection": ChannelParameter(type=FeatureSelection)}


class FeatureSelector(base_component.BaseComponent):
    """Scores the fields per (scenario, task) on Transform's output and emits a FeatureSelection.

    ``method`` is one of ``executor.METHODS`` (multisfs, multifs, the scikit-learn
    baselines, saliency, none) and ``params`` its parameters (validated here).

    With ``anomalies`` wired in, it first refuses to go on (and so stops the run
    before training) when ExampleValidator found any anomaly.
    """

    SPEC_CLASS = FeatureSelectorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, transformed_examples: types.BaseChannel, transform_graph: types.BaseChannel,
                 dataset_spec_json: str, method: str = "saliency",
                 params: Optional[Dict[str, Any]] = None,
                 anomalies: Optional[types.BaseChannel] = None):
        if method not in executor.METHODS:
            raise ValueError(f"FeatureSelector: unknown method {method!r}; known: {executor.METHODS}")
        executor.validate_params(method, params)  # A bad key fails when the pipeline is built.
        super().__init__(spec=FeatureSelectorSpec(
            transformed_examples=transformed_examples, transform_graph=transform_graph,
            anomalies=anomalies, dataset_spec=dataset_spec_json, method=method,
            params=json.dumps(params or {}, sort_keys=True),
            feature_selection=types.Channel(type=FeatureSelection)))
