"""Release gates: per slice x task AUC floors and no-regression bounds (TFMA), proven with a
good model followed by a degraded one in the same pipeline."""

import os

import pytest

from pipeline import configs, evaluation, specs


def test_thresholds_cover_every_slice_and_task_output():
    spec = specs.load_dataset_spec("synthetic")
    config = evaluation.eval_config(spec, configs.EvalThresholds(auc_floor=0.6, max_auc_regression=0.01))
    (metrics_spec,) = config.metrics_specs
    assert list(metrics_spec.output_names) == ["click", "conversion"]  # Per task output.
    (auc,) = [m for m in metrics_spec.metrics if m.class_name == "AUC"]
    (gate,) = auc.per_slice_thresholds
    assert [list(s.feature_keys) for s in gate.slicing_specs] == [[], ["channel"], ["channel", "domain"]]
    assert gate.threshold.value_threshold.lower_bound.value == pytest.approx(0.6)
    assert gate.threshold.change_threshold.absolute.value == pytest.approx(-0.01)
    # A new scenario needs no edit: slices are by column, not by value.
    assert [list(s.feature_keys) for s in config.slicing_specs] == [
        [], ["channel"], ["channel", "domain"]]


def test_good_model_is_blessed_and_pushed(blessing_runs):
    (_, good), _, _ = blessing_runs
    assert good.validation_ok and good.blessed and good.pushed
    assert good.gate_failures == [] and good.baseline_model is None
    assert os.path.exists(os.path.join(good.pushed_destination, "saved_model.pb"))


def test_degraded_model_is_not_blessed_and_not_pushed(blessing_runs):
    (config, good), (_, bad), _ = blessing_runs
    assert bad.component_states["Evaluator"] == "ran" and bad.component_states["Pusher"] == "ran"
    # The baseline was the first run's blessed model, not the candidate.
    assert bad.baseline_model == good.uri("MSMTTrainer.model")
    assert bad.uri("MSMTTrainer.model") != good.uri("MSMTTrainer.model")
    assert bad.validation_ok is False and bad.blessed is False and bad.pushed is False
    # Only the good model is in the serving directory.
    assert os.listdir(config.serving_model_dir) == [os.path.basename(good.pushed_destination)]


def test_run_explains_which_slice_and_task_failed(blessing_runs):
    (_, good), (_, bad), scenario = blessing_runs
    failed = {(f.slice, f.task): f for f in bad.gate_failures}
    # The scenario whose training labels were shuffled lost its click AUC.
    failure = failed[(scenario, "click")]
    assert failure.metric == "auc" and failure.max_regression == pytest.approx(0.03)
    assert failure.value == pytest.approx(bad.metrics[(scenario, "click")]["auc"])
    # Baseline and candidate were evaluated on the same eval file: the baseline's value is
    # the first run's AUC for that slice.
    assert failure.baseline == pytest.approx(good.metrics[(scenario, "click")]["auc"], abs=1e-4)
    assert failure.baseline - failure.value > 0.03
    assert f"{scenario} / click: AUC {failure.value:.4f}" in failure.text
    assert f"baseline's {failure.baseline:.4f}" in failure.text
    # Every failure names a gated slice (overall, a channel or a scenario) and a task.
    assert all(f.task in ("click", "conversion") for f in bad.gate_failures)
    assert bad.validation_failures == [f.text for f in bad.gate_failures]


def test_gate_failures_read_both_kinds_of_threshold():
    """A floor and a regression failure in TFMA's ValidationResult, as the report states them."""
    from google.protobuf import text_format
    from tensorflow_model_analysis.proto import validation_result_pb2
    from pipeline import report
    validation = text_format.Parse("""
      validation_ok: false
      metric_validations_per_slice {
        slice_key { single_slice_keys { column: "channel" bytes_value: "ch1" }
                    single_slice_keys { column: "domain" bytes_value: "s3" } }
        failures { metric_key { name: "auc" output_name: "conversion" }
                   metric_value { double_value { value: 0.45 } }
                   metric_threshold { value_threshold { lower_bound { value: 0.5 } } } }
        failures { metric_key { name: "auc" output_name: "click" is_diff: true }
                   metric_value { double_value { value: -0.1 } }
                   metric_threshold { change_threshold { direction: HIGHER_IS_BETTER
                                                         absolute { value: -0.03 } } } }
      }""", validation_result_pb2.ValidationResult())
    metrics = {("ch1/s3", "click"): {"auc": 0.6, "auc_diff": -0.1}}
    regression, floor = sorted(report.gate_failures(validation, metrics), key=lambda f: f.task)
    assert (floor.slice, floor.task, floor.value, floor.floor) == ("ch1/s3", "conversion", 0.45, 0.5)
    assert floor.text == "ch1/s3 / conversion: AUC 0.4500 is below the floor 0.5000"
    assert (regression.task, regression.value, regression.max_regression) == ("click", 0.6, 0.03)
    assert regression.baseline == pytest.approx(0.7)
    assert regression.text == ("ch1/s3 / click: AUC 0.6000 fell 0.1000 below the baseline's 0.7000 "
                               "(latest blessed model; at most 0.0300 allowed)")
