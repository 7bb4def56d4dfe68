"""The `msmt` command line: user mistakes get one clear message and exit code 2."""

import gzip
import os


from pipeline import cli

GOOD_SPEC = """
name: tiny
inputs: {{files: {data}}}
scenario: {{column: domain}}
tasks:
  - {{name: click, label: click}}
categorical_fields: [color]
numerical_fields: [{{name: price, buckets: 4}}]
split: {{method: hash, eval_fraction: {eval_fraction}}}
"""


def _write(tmp_path, rows, eval_fraction=0.3, header="domain,color,price,click"):
    data = tmp_path / "data.csv.gz"
    with gzip.open(data, "wt") as f:
        f.write(header + "\n" + "\n".join(rows) + "\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(GOOD_SPEC.format(data=data, eval_fraction=eval_fraction))
    return str(spec)


def _good_rows(n):
    return [f"s{i % 3},{'red' if i % 2 else 'blue'},{i * 0.5},{i % 2}" for i in range(n)]


def _run(spec, tmp_path, *extra):
    return cli.main(["run", "--dataset", spec, "--output-dir", str(tmp_path / "runs"),
                     "--beam-workers", "1", "--verbose", *extra])


def test_unknown_spec_key_is_one_message(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text(GOOD_SPEC.format(data="x.csv", eval_fraction=0.2) + "scenaro: {column: x}\n")
    assert _run(str(spec), tmp_path) == 2
    err = capsys.readouterr().err
    assert "bad.yaml: scenaro: unknown key (did you mean 'scenario'?)" in err
    assert "Traceback" not in err


def test_missing_column_is_named_with_its_file(tmp_path, capsys):
    spec = _write(tmp_path, ["s0,red,1,0"], header="domain,colour,price,click")
    assert cli.main(["check", "--dataset", spec]) == 2
    err = capsys.readouterr().err
    assert "column 'color'" in err and "data.csv.gz" in err and "did you mean 'colour'" in err


def test_missing_input_file(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(GOOD_SPEC.format(data=tmp_path / "nope.csv", eval_fraction=0.2))
    assert _run(str(spec), tmp_path) == 2
    assert "no file matches" in capsys.readouterr().err


def test_unknown_model_hyper_parameter_fails_before_any_component(tmp_path, capsys):
    spec = _write(tmp_path, _good_rows(50))
    model = tmp_path / "model.yaml"
    model.write_text("architecture: mmoe\nhparams: {num_expert: 3}\n")
    assert _run(spec, tmp_path, "--model", str(model)) == 2
    err = capsys.readouterr().err
    assert "model.yaml: hparams.num_expert" in err and "did you mean 'num_experts'" in err
    assert not (tmp_path / "runs").exists()


def test_malformed_rows_over_the_limit_stop_the_run_and_are_kept(tmp_path, capsys):
    rows = _good_rows(60) + ["s1,red,not-a-number,1", "s2,blue,3.0", "s0,red,1.0,7"]
    spec = _write(tmp_path, rows)
    assert _run(spec, tmp_path) == 2
    err = capsys.readouterr().err
    assert "3 of 63 rows" in err and "max_bad_row_fraction" in err
    assert "'not-a-number' is not a number" in err and "expected 4 fields, got 3" in err
    quarantine = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "runs")
                  for f in fs if "bad_rows" in f]
    assert quarantine, "the bad rows are kept on disk"
    with open(quarantine[0]) as f:
        kept = f.read()
    assert "data.csv.gz:62" in kept  # file:line of the first bad row (header is line 1).


def test_empty_eval_split_is_named(tmp_path, capsys):
    spec = _write(tmp_path, _good_rows(2), eval_fraction=0.01)
    assert _run(spec, tmp_path) == 2
    assert "split 'eval' is empty" in capsys.readouterr().err


def test_generate_writes_data_and_ground_truth(tmp_path, capsys):
    assert cli.main(["generate", "--rows", "500", "--output", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "data.csv.gz").exists() and (tmp_path / "g" / "ground_truth.json").exists()
    assert "Oracle AUC" in capsys.readouterr().out


def test_kubeflow_compile_writes_a_pipeline_spec_with_every_component(tmp_path, capsys):
    import json
    spec = _write(tmp_path, _good_rows(50))
    out = tmp_path / "pipeline.json"
    assert cli.main(["kubeflow", "compile", "--dataset", spec, "--output", str(out),
                     "--pipeline-root", "gs://bucket/msmt", "--image", "example.com/msmt:1"]) == 0
    compiled = json.loads(out.read_text())
    tasks = set(compiled["pipelineSpec"]["root"]["dag"]["tasks"])
    assert {"FileBasedExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Transform",
            "FeatureSelector", "MSMTTrainer", "Evaluator", "Pusher"} <= tasks
    executors = compiled["pipelineSpec"]["deploymentSpec"]["executors"]
    assert all(e["container"]["image"] == "example.com/msmt:1"
               for e in executors.values() if "container" in e)
    parameters = compiled["pipelineSpec"]["root"]["inputDefinitions"]["parameters"]
    assert parameters["data_root"]["defaultValue"] == str(tmp_path)
    assert parameters["beam_pipeline_args"]["parameterType"] == "LIST"
    assert compiled["pipelineSpec"]["defaultPipelineRoot"] == "gs://bucket/msmt"
