"""The Tuner: the model spec's search space, KerasTuner through the TFX executors, the
Trainer taking the best hyper-parameters, and the pipeline wiring."""

import json
import os
import re

import pytest
from tfx.dsl.components.base import base_executor
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.utils import json_utils, proto_utils

from components.feature_selector.artifact import FeatureSelection
from components.trainer import component as trainer_component
from models import tuning
from models.training import DATA_INFO_FILE
from pipeline import configs, specs
from pipeline import pipeline as msmt_pipeline

SEARCH_SPACE = {"learning_rate": {"values": [0.001, 0.01]},
                "num_experts": {"min": 2, "max": 3},
                "dropout": {"min": 0.0, "max": 0.2}}


def _model_spec_data(tuning_block):
    data = {"name": "mmoe_tuned", "architecture": "mmoe", "embedding_dim": 8,
            "hparams": {"num_experts": 2, "expert_units": [16], "tower_units": [8], "dropout": 0.1},
            "training": {"batch_size": 256, "learning_rate": 0.002, "epochs": 1}}
    if tuning_block is not None:
        data["tuning"] = tuning_block
    return data


def test_search_space_is_validated_on_load():
    spec = specs.parse_model_spec(_model_spec_data(SEARCH_SPACE), "m.yaml")
    assert spec.search_space["num_experts"] == {"min": 2, "max": 3, "sampling": "linear"}
    assert spec.search_space["learning_rate"] == {"values": (0.001, 0.01)}
    assert specs.ModelSpec.from_json(spec.to_json()) == spec
    assert specs.parse_model_spec(_model_spec_data(None), "m.yaml").tuning == ()  # Optional.
    bad = [({"num_expert": {"min": 1, "max": 2}}, "m.yaml: tuning.num_expert: not a tunable "
            "hyper-parameter of this spec (did you mean 'num_experts'?)"),
           ({"dropout": {"min": 0.3, "max": 0.1}}, "tuning.dropout.max: must be greater than min"),
           ({"learning_rate": {"min": 0, "max": 0.1, "sampling": "log"}},
            "tuning.learning_rate.min: must be > 0 with log sampling"),
           ({"dropout": {"min": 0.0, "max": 0.2, "sampling": "cubic"}}, "tuning.dropout.sampling"),
           ({"dropout": {"values": []}}, "tuning.dropout.values"),
           ({"dropout": {"values": [0.1], "min": 0.0}}, "a choice takes no min"),
           ({"dropout": {"low": 0.1}}, "tuning.dropout.low: unknown key")]
    for block, message in bad:
        with pytest.raises(specs.SpecError, match=re.escape(message)):
            specs.parse_model_spec(_model_spec_data(block), "m.yaml")


def test_declared_values_are_applied_over_the_spec():
    import keras_tuner
    spec = specs.parse_model_spec(_model_spec_data(SEARCH_SPACE), "m.yaml")
    hp = keras_tuner.HyperParameters()
    values = tuning.declare(hp, spec)
    kinds = {h.name: type(h).__name__ for h in hp.space}
    assert kinds == {"learning_rate": "Choice", "num_experts": "Int", "dropout": "Float"}
    assert values == {"learning_rate": 0.001, "num_experts": 2, "dropout": 0.0}  # Defaults.
    applied = tuning.apply_hyperparameters(spec, {"values": {"num_experts": 3, "learning_rate": 0.01,
                                                             "embedding_dim": 4}})
    assert applied.hparams_dict["num_experts"] == 3 and applied.embedding_dim == 4
    assert applied.training_dict["learning_rate"] == 0.01
    assert applied.hparams_dict["expert_units"] == spec.hparams_dict["expert_units"]
    history = {"val_click_auc": [0.6, 0.7], "val_conversion_auc": [0.8, 0.5], "val_loss": [1, 2]}
    assert tuning.mean_eval_auc(history, ["click", "conversion"]) == pytest.approx([0.7, 0.6])
    with pytest.raises(ValueError, match="'width'"):
        tuning.apply_hyperparameters(spec, {"width": 3})


def test_tuning_needs_a_search_space():
    dataset = specs.load_dataset_spec("synthetic")
    with pytest.raises(ValueError, match="no tuning: block"):
        configs.PipelineConfig(dataset=dataset, model=specs.load_model_spec("shared_bottom"),
                               output_dir="/tmp/x",
                               tuning=configs.TuningConfig())
    with pytest.raises(ValueError, match="algorithm"):
        configs.TuningConfig(algorithm="grid")


def test_pipeline_wires_the_tuner_before_the_trainer(tmp_path):
    dataset = specs.load_dataset_spec("synthetic")
    model = specs.parse_model_spec(_model_spec_data(SEARCH_SPACE), "m.yaml")
    for tuning_config in (None, configs.TuningConfig(max_trials=2)):
        config = configs.PipelineConfig(dataset=dataset, model=model, output_dir=str(tmp_path),
                                        tuning=tuning_config)
        pipeline = msmt_pipeline.create_pipeline(**config.pipeline_arguments())
        by_id = {c.id: c for c in pipeline.components}
        trainer = by_id["MSMTTrainer"]
        if tuning_config is None:
            assert "MSMTTuner" not in by_id
            assert trainer.inputs.get("hyperparameters") is None
            continue
        tuner = by_id["MSMTTuner"]
        assert trainer.inputs["hyperparameters"].producer_component_id == "MSMTTuner"
        assert tuner.inputs["feature_selection"].producer_component_id == "FeatureSelector"
        assert json.loads(tuner.exec_properties["custom_config"])["tuning"]["max_trials"] == 2
        order = [c.id for c in pipeline.components]
        assert order.index("FeatureSelector") < order.index("MSMTTuner") < order.index("MSMTTrainer")


def _artifact(cls, uri, splits=None):
    artifact = cls()
    artifact.uri = uri
    if splits:
        artifact.split_names = artifact_utils.encode_split_names(splits)
    return artifact


def test_tuner_searches_and_trainer_takes_the_best(blessing_runs, tmp_path):
    """Two KerasTuner trials through MSMTTuner's executor on a run's Transform output and
    FeatureSelection, then MSMTTrainer's executor with the best hyper-parameters."""
    (config, run), _, _ = blessing_runs
    model = specs.parse_model_spec(_model_spec_data(SEARCH_SPACE), "m.yaml")
    tuned = configs.PipelineConfig(dataset=config.dataset, model=model, output_dir=str(tmp_path),
                                   tuning=configs.TuningConfig(max_trials=2, epochs=1))
    inputs = {
        "examples": [_artifact(standard_artifacts.Examples,
                               run.uri("Transform.transformed_examples"), ["train", "eval"])],
        "transform_graph": [_artifact(standard_artifacts.TransformGraph,
                                      run.uri("Transform.transform_graph"))],
        "schema": [_artifact(standard_artifacts.Schema, run.uri("SchemaGen.schema"))],
        "feature_selection": [_artifact(FeatureSelection,
                                        run.uri("FeatureSelector.feature_selection"))],
    }
    common = {"train_args": proto_utils.proto_to_json(trainer_pb2.TrainArgs()),
              "eval_args": proto_utils.proto_to_json(trainer_pb2.EvalArgs()),
              "custom_config": json_utils.dumps(tuned.custom_config())}
    best = _artifact(standard_artifacts.HyperParameters, str(tmp_path / "best_hyperparameters"))
    results = _artifact(standard_artifacts.TunerResults, str(tmp_path / "tuner_results"))
    for artifact in (best, results):
        os.makedirs(artifact.uri)
    context = base_executor.BaseExecutor.Context(tmp_dir=str(tmp_path / "tmp"), unique_id="1")
    trainer_component.TunerExecutor(context).Do(
        inputs, {"best_hyperparameters": [best], "tuner_results": [results]},
        {**common, "tuner_fn": configs.TUNER_FN})

    with open(os.path.join(best.uri, "best_hyperparameters.txt")) as f:
        best_values = json.load(f)["values"]
    assert set(best_values) == set(SEARCH_SPACE)
    with open(os.path.join(results.uri, "tuner_results.json")) as f:
        trials = json.load(f)
    assert len(trials) == 2
    scores = [t["score"] for t in trials]
    assert all(0.0 < s <= 1.0 for s in scores)  # The objective: mean eval AUC over tasks.
    assert max(scores) == trials[0]["score"]
    assert {k: trials[0][k] for k in SEARCH_SPACE} == best_values

    from tensorflow.python.distribute import mirrored_strategy
    mirrored_strategy.MirroredStrategy._collective_key_base += 100_000  # As test_models.py.
    model_out = _artifact(standard_artifacts.Model, str(tmp_path / "model"))
    model_run = _artifact(standard_artifacts.ModelRun, str(tmp_path / "model_run"))
    trainer_component.Executor(context).Do(
        {**inputs, "hyperparameters": [best]}, {"model": [model_out], "model_run": [model_run]},
        {**common, "run_fn": configs.RUN_FN})
    with open(os.path.join(model_run.uri, DATA_INFO_FILE)) as f:
        trained = specs.ModelSpec.from_json(json.dumps(json.load(f)["model_spec"]))
    assert trained.hparams_dict["num_experts"] == best_values["num_experts"]
    assert trained.hparams_dict["dropout"] == pytest.approx(best_values["dropout"])
    assert trained.training_dict["learning_rate"] == best_values["learning_rate"]
    assert os.path.exists(os.path.join(model_out.uri, "Format-Serving", "saved_model.pb"))
