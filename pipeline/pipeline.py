"""create_pipeline: instantiates and wires the components, nothing else."""

from typing import Any, Dict, List, Optional

import tensorflow_model_analysis as tfma
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from components.evaluator import Evaluator
from components.example_gen.executor import make_example_gen
from components.feature_selector import FeatureSelector
from components.statistics_gen import StatisticsGen
from components.trainer import MSMTTrainer
from components.trainer.component import MSMTTuner
from components.transform import Transform
from pipeline.specs import DatasetSpec


class LatestArtifactIfAnyStrategy(tfx.dsl.experimental.LatestArtifactStrategy):
    """The latest artifact, or none on the first run (TFX's returns None and fails it)."""

    def resolve_artifacts(self, store, input_dict):
        return self._resolve(input_dict)


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    dataset_spec: DatasetSpec,
    custom_config: Dict[str, Any],
    transform_config: Dict[str, Any],
    preprocessing_fn: str,
    run_fn: str,
    selector_method: str,
    selector_params: Dict[str, Any],
    eval_config: tfma.EvalConfig,
    serving_model_dir: str,
    beam_pipeline_args: List[str],
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    enable_cache: bool = True,
    data_root: Optional[Any] = None,  # str or RuntimeParameter: overrides the spec's data root.
    tuner_fn: Optional[str] = None,  # With it, the Tuner searches before the Trainer.
    transform_analyzer_cache: bool = False,  # Transform reuses the latest run's analyzer results.
) -> tfx.dsl.Pipeline:
    example_gen = make_example_gen(dataset_spec, input_base=data_root)
    statistics_gen = StatisticsGen(examples=example_gen.outputs["examples"])
    schema_gen = tfx.components.SchemaGen(
        statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    analyzer_cache = None
    if transform_analyzer_cache:
        analyzer_cache = tfx.dsl.Resolver(
            strategy_class=LatestArtifactIfAnyStrategy,
            cache=tfx.dsl.Channel(type=tfx.types.standard_artifacts.TransformCache),
        ).with_id("latest_transform_cache_resolver")
    transform = Transform(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        preprocessing_fn=preprocessing_fn, custom_config=transform_config,
        analyzer_cache=analyzer_cache.outputs["cache"] if analyzer_cache else None,
        disable_statistics=True)  # StatisticsGen has already made the one pass needed.
    feature_selector = FeatureSelector(
        transformed_examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        anomalies=example_validator.outputs["anomalies"],
        dataset_spec_json=custom_config["dataset_spec"], method=selector_method,
        params=selector_params)
    tuner = None
    if tuner_fn:
        tuner = MSMTTuner(
            examples=transform.outputs["transformed_examples"],
            transform_graph=transform.outputs["transform_graph"],
            schema=schema_gen.outputs["schema"],
            feature_selection=feature_selector.outputs["feature_selection"],
            tuner_fn=tuner_fn, custom_config=custom_config)
    trainer = MSMTTrainer(
        examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        feature_selection=feature_selector.outputs["feature_selection"],
        hyperparameters=tuner.outputs["best_hyperparameters"] if tuner else None,
        run_fn=run_fn, custom_config=custom_config)
    latest_blessed_model = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    evaluator = Evaluator(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=latest_blessed_model.outputs["model"], schema=schema_gen.outputs["schema"],
        eval_config=eval_config)
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_model_dir)))
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name, pipeline_root=pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator]
        + ([analyzer_cache] if analyzer_cache else []) + [transform,
                    feature_selector] + ([tuner] if tuner else []) + [
                    trainer, latest_blessed_model, evaluator, pusher],
        enable_cache=enable_cache, metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args)
