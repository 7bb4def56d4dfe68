"""`msmt kubeflow schedule` and `msmt kubeflow runs` against a stand-in for a KFP cluster.

The stand-in is an HTTP server on 127.0.0.1 answering the KFP v2beta1 REST
endpoints the kfp SDK client calls (health, experiments, pipeline and version
upload, recurring runs, runs); it records every request so the tests can assert
what the client sent.
"""

import email.parser
import email.policy
import itertools
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kubeflow import schedule
from pipeline import cli

API = "/apis/v2beta1"


class FakeKFP:
    """The state of a KFP server, and the requests it was sent."""

    def __init__(self):
        self.requests = []
        self.experiments, self.pipelines, self.versions = {}, {}, {}
        self.recurring_runs, self.runs = {}, {}
        self._ids = itertools.count(1)

    def new_id(self, kind):
        return f"{kind}-{next(self._ids)}"

    def handle(self, method, path, query, body, content_type):
        self.requests.append({"method": method, "path": path, "query": query})
        if path == f"{API}/healthz":
            return {"multi_user": False}
        if path == f"{API}/experiments":
            if method == "POST":
                experiment = dict(json.loads(body), experiment_id=self.new_id("experiment"))
                self.experiments[experiment["experiment_id"]] = experiment
                return experiment
            return {"experiments": _filter(self.experiments.values(), query)}
        if path == f"{API}/pipelines":
            return {"pipelines": _filter(self.pipelines.values(), query)}
        if path in (f"{API}/pipelines/upload", f"{API}/pipelines/upload_version"):
            spec = _uploaded_file(body, content_type)
            if path.endswith("/upload"):
                pipeline = {"pipeline_id": self.new_id("pipeline"), "display_name": query["name"]}
                self.pipelines[pipeline["pipeline_id"]] = pipeline
                pipeline_id, version_name = pipeline["pipeline_id"], query["name"]
            else:
                pipeline_id, version_name = query["pipelineid"], query["name"]
            version = {"pipeline_id": pipeline_id, "pipeline_version_id": self.new_id("version"),
                       "display_name": version_name, "pipeline_spec": spec,
                       "created_at": f"2026-01-01T00:00:{len(self.versions):02d}Z"}
            self.versions[version["pipeline_version_id"]] = version
            return pipeline if path.endswith("/upload") else version
        if path.startswith(f"{API}/pipelines/") and path.endswith("/versions"):
            pipeline_id = path.split("/")[-2]
            versions = sorted(
                (v for v in self.versions.values() if v["pipeline_id"] == pipeline_id),
                key=lambda v: v["created_at"], reverse=True)
            return {"pipeline_versions": versions, "total_size": len(versions)}
        if path == f"{API}/recurringruns":
            if method == "POST":
                run = dict(json.loads(body), recurring_run_id=self.new_id("recurring"))
                self.recurring_runs[run["recurring_run_id"]] = run
                return run
            runs = [r for r in self.recurring_runs.values()
                    if r["experiment_id"] == query.get("experiment_id")]
            return {"recurringRuns": runs, "total_size": len(runs)}  # KFP's JSON name.
        if path.startswith(f"{API}/recurringruns/"):
            run_id = path.rsplit("/", 1)[1]
            if method == "POST" and run_id.endswith(":disable"):
                self.recurring_runs[run_id[:-len(":disable")]]["mode"] = "DISABLE"
                return {}
            if method == "DELETE":
                del self.recurring_runs[run_id]
                return {}
        if path == f"{API}/runs":
            runs = [r for r in self.runs.values()
                    if "experiment_id" not in query or r["experiment_id"] == query["experiment_id"]]
            runs.sort(key=lambda r: r["created_at"], reverse=True)
            return {"runs": runs[:int(query.get("page_size", 10))], "total_size": len(runs)}
        raise KeyError(f"{method} {path}")


def _filter(items, query):
    """KFP's list filter, as the client uses it: display_name EQUALS a string."""
    items = list(items)
    if "filter" in query:
        predicate = json.loads(query["filter"])["predicates"][0]
        items = [i for i in items if i["display_name"] == predicate["stringValue"]]
    return items


def _uploaded_file(body, content_type):
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    (part,) = [p for p in message.iter_parts() if p.get_param("name", header="content-disposition")
               == "uploadfile"]
    return json.loads(part.get_payload(decode=True))


@pytest.fixture
def kfp_server():
    state = FakeKFP()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            url = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                reply, code = state.handle(self.command, url.path, query, body,
                                           self.headers.get("Content-Type", "")), 200
            except KeyError as e:
                reply, code = {"error": f"not found: {e}"}, 404
            data = json.dumps(reply).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.host = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def spec_file(tmp_path):
    """A compiled job's shape: the pipeline spec, its parameters and runtime config."""
    job = {"displayName": "msmt-synthetic-mmoe",
           "pipelineSpec": {
               "pipelineInfo": {"name": "msmt-synthetic-mmoe"},
               "defaultPipelineRoot": "gs://bucket/msmt",
               "root": {"dag": {"tasks": {}}, "inputDefinitions": {"parameters": {
                   "data_root": {"parameterType": "STRING", "defaultValue": "gs://bucket/data"},
                   "beam_pipeline_args": {"parameterType": "LIST",
                                          "defaultValue": ["--runner=DirectRunner"]}}}}},
           "runtimeConfig": {"gcsOutputDirectory": "gs://bucket/msmt", "parameterValues": {
               "data_root": "gs://bucket/data", "beam_pipeline_args": ["--runner=DirectRunner"]}}}
    path = tmp_path / "pipeline.json"
    path.write_text(json.dumps(job))
    return str(path), job


def _schedule(server, spec, *extra):
    return cli.main(["kubeflow", "schedule", "--host", server.host, "--spec", spec,
                     "--experiment", "nightly", "--cron", "0 0 3 * * *",
                     "--max-concurrency", "1", *extra])


def test_schedule_creates_experiment_pipeline_and_recurring_run(kfp_server, spec_file, capsys):
    path, job = spec_file
    assert _schedule(kfp_server, path, "--param", "data_root=gs://other/data") == 0

    (experiment,) = kfp_server.experiments.values()
    assert experiment["display_name"] == "nightly"
    (pipeline,) = kfp_server.pipelines.values()
    assert pipeline["display_name"] == "msmt-synthetic-mmoe"
    (version,) = kfp_server.versions.values()
    assert version["pipeline_spec"] == job["pipelineSpec"]  # The spec itself was uploaded.
    (run,) = kfp_server.recurring_runs.values()
    assert run["display_name"] == "msmt-synthetic-mmoe"
    assert run["experiment_id"] == experiment["experiment_id"]
    assert run["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * *"}}
    assert run["max_concurrency"] == "1" or run["max_concurrency"] == 1
    assert run["no_catchup"] is True
    assert run["mode"] == "ENABLE"
    assert run["pipeline_version_reference"] == {
        "pipeline_id": pipeline["pipeline_id"],
        "pipeline_version_id": version["pipeline_version_id"]}
    assert run["runtime_config"]["pipeline_root"] == "gs://bucket/msmt"
    assert run["runtime_config"]["parameters"] == {
        "data_root": "gs://other/data", "beam_pipeline_args": ["--runner=DirectRunner"]}
    assert run["recurring_run_id"] in capsys.readouterr().out


def test_second_schedule_uploads_a_version_and_replaces_the_recurring_run(kfp_server, spec_file):
    path, _ = spec_file
    assert _schedule(kfp_server, path) == 0
    (first,) = kfp_server.recurring_runs
    kfp_server.requests.clear()
    assert _schedule(kfp_server, path, "--version", "v2", "--pipeline-root", "gs://b2/root",
                     "--cron", "0 30 4 * * *") == 0

    assert len(kfp_server.experiments) == 1 and len(kfp_server.pipelines) == 1
    versions = sorted(kfp_server.versions.values(), key=lambda v: v["created_at"])
    assert [v["display_name"] for v in versions] == ["msmt-synthetic-mmoe", "v2"]
    (second_id, second), = kfp_server.recurring_runs.items()
    assert second_id != first
    assert second["pipeline_version_reference"]["pipeline_version_id"] == \
        versions[1]["pipeline_version_id"]
    assert second["trigger"]["cron_schedule"]["cron"] == "0 30 4 * * *"
    assert second["runtime_config"]["pipeline_root"] == "gs://b2/root"
    calls = [(r["method"], r["path"]) for r in kfp_server.requests]
    # The old recurring run is disabled, then deleted, before the new one is created.
    disable = calls.index(("POST", f"{API}/recurringruns/{first}:disable"))
    delete = calls.index(("DELETE", f"{API}/recurringruns/{first}"))
    create = calls.index(("POST", f"{API}/recurringruns"))
    assert disable < delete < create
    assert ("POST", f"{API}/pipelines/upload_version") in calls
    assert ("POST", f"{API}/pipelines/upload") not in calls


def test_runs_lists_recent_runs_of_an_experiment(kfp_server, spec_file, capsys):
    path, _ = spec_file
    assert _schedule(kfp_server, path) == 0
    (experiment_id,) = kfp_server.experiments
    for i, state in enumerate(["SUCCEEDED", "FAILED", "RUNNING"]):
        kfp_server.runs[f"run-{i}"] = {
            "run_id": f"run-{i}", "display_name": f"nightly-{i}", "state": state,
            "experiment_id": experiment_id if i else "other",
            "created_at": f"2026-01-0{i + 1}T03:00:00Z"}
    capsys.readouterr()
    assert cli.main(["kubeflow", "runs", "--host", kfp_server.host, "--experiment", "nightly",
                     "--limit", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["run-2", "run-1"]  # Newest first.
    assert "RUNNING" in lines[1] and "FAILED" in lines[2]
    listed = [r for r in kfp_server.requests if r["path"] == f"{API}/runs"][-1]
    assert listed["query"]["experiment_id"] == experiment_id
    assert listed["query"]["page_size"] == "5"


@pytest.mark.parametrize("args, message", [
    (["--cron", "0 3 * * *"], "KFP expects 6 fields"),
    (["--max-concurrency", "0"], "--max-concurrency must be in 1..10"),
    (["--param", "epochs=3"], "unknown runtime parameter(s) ['epochs']"),
])
def test_schedule_rejects_bad_arguments_before_changing_anything(kfp_server, spec_file, capsys,
                                                                 args, message):
    path, _ = spec_file
    assert _schedule(kfp_server, path, *args) == 2
    assert message in capsys.readouterr().err
    assert not kfp_server.pipelines and not kfp_server.recurring_runs


def test_unreachable_host_is_named(spec_file, capsys):
    path, _ = spec_file
    assert cli.main(["kubeflow", "runs", "--host", "http://127.0.0.1:9"]) == 2
    assert "cannot reach Kubeflow Pipelines at http://127.0.0.1:9" in capsys.readouterr().err


def test_check_cron_normalises_spacing():
    assert schedule.check_cron(" 0  0 3 * * * ") == "0 0 3 * * *"
