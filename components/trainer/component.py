"""MSMTTrainer and MSMTTuner: the TFX Trainer and Tuner with one more input, the
FeatureSelection to honour."""

from typing import Any, Dict, Optional

from tfx import types
from tfx.components.trainer import executor as trainer_executor
from tfx.components.tuner import executor as tuner_executor
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import trainer_pb2, tuner_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter
from tfx.utils import json_utils

from components.feature_selector.artifact import FeatureSelection

FEATURE_SELECTION_KEY = "feature_selection"
FEATURE_SELECTION_URI = "feature_selection_uri"  # Key run_fn finds in custom_config.


class MSMTTrainerSpec(standard_component_specs.TrainerSpec):
    INPUTS = {
        **standard_component_specs.TrainerSpec.INPUTS,
        FEATURE_SELECTION_KEY: ChannelParameter(type=FeatureSelection, optional=True),
    }


class Executor(trainer_executor.GenericExecutor):
    """Passes the FeatureSelection's location to run_fn through ``custom_config``."""

    def _GetFnArgs(self, input_dict, output_dict, exec_properties):
        fn_args = super()._GetFnArgs(input_dict, output_dict, exec_properties)
        fn_args.custom_config = dict(fn_args.custom_config or {})
        if input_dict.get(FEATURE_SELECTION_KEY):
            fn_args.custom_config[FEATURE_SELECTION_URI] = artifact_utils.get_single_uri(
                input_dict[FEATURE_SELECTION_KEY])
        return fn_args


class MSMTTrainer(base_component.BaseComponent):
    """Trains with ``run_fn`` under the same contract as ``tfx.components.Trainer``."""

    SPEC_CLASS = MSMTTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, examples: types.BaseChannel, transform_graph: types.BaseChannel,
                 run_fn: str, schema: Optional[types.BaseChannel] = None,
                 feature_selection: Optional[types.BaseChannel] = None,
                 hyperparameters: Optional[types.BaseChannel] = None,
                 train_args: Optional[trainer_pb2.TrainArgs] = None,
                 eval_args: Optional[trainer_pb2.EvalArgs] = None,
                 custom_config: Optional[Dict[str, Any]] = None):
        super().__init__(spec=MSMTTrainerSpec(
            examples=examples, transform_graph=transform_graph, schema=schema,
            hyperparameters=hyperparameters, feature_selection=feature_selection,
            train_args=train_args or trainer_pb2.TrainArgs(),
            eval_args=eval_args or trainer_pb2.EvalArgs(),
            run_fn=run_fn, custom_config=json_utils.dumps(custom_config or {}),
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun)))


class MSMTTunerSpec(standard_component_specs.TunerSpec):
    INPUTS = {
        **standard_component_specs.TunerSpec.INPUTS,
        FEATURE_SELECTION_KEY: ChannelParameter(type=FeatureSelection, optional=True),
    }


class TunerExecutor(tuner_executor.Executor):
    """Passes the FeatureSelection's location to tuner_fn through ``custom_config``."""

    def Do(self, input_dict, output_dict, exec_properties):
        if input_dict.get(FEATURE_SELECTION_KEY):
            config = json_utils.loads(exec_properties.get("custom_config") or "null") or {}
            config[FEATURE_SELECTION_URI] = artifact_utils.get_single_uri(
                input_dict[FEATURE_SELECTION_KEY])
            exec_properties = {**exec_properties, "custom_config": json_utils.dumps(config)}
        super().Do(input_dict, output_dict, exec_properties)


class MSMTTuner(base_component.BaseComponent):
    """Searches hyper-parameters with ``tuner_fn`` under the contract of ``tfx.components.Tuner``;
    tuning sees the same fields as training."""

    SPEC_CLASS = MSMTTunerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(TunerExecutor)

    def __init__(self, examples: types.BaseChannel, transform_graph: types.BaseChannel,
                 tuner_fn: str, schema: Optional[types.BaseChannel] = None,
                 feature_selection: Optional[types.BaseChannel] = None,
                 train_args: Optional[trainer_pb2.TrainArgs] = None,
                 eval_args: Optional[trainer_pb2.EvalArgs] = None,
                 tune_args: Optional[tuner_pb2.TuneArgs] = None,
                 custom_config: Optional[Dict[str, Any]] = None):
        super().__init__(spec=MSMTTunerSpec(
            examples=examples, transform_graph=transform_graph, schema=schema,
            feature_selection=feature_selection, tuner_fn=tuner_fn,
            train_args=train_args or trainer_pb2.TrainArgs(),
            eval_args=eval_args or trainer_pb2.EvalArgs(), tune_args=tune_args,
            custom_config=json_utils.dumps(custom_config or {}),
            best_hyperparameters=types.Channel(type=standard_artifacts.HyperParameters),
            tuner_results=types.Channel(type=standard_artifacts.TunerResults)))
