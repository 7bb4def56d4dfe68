"""Schedules the compiled pipeline on Kubeflow Pipelines and lists its runs (kfp SDK client).

``schedule`` creates or updates a recurring run: gets or creates the experiment,
uploads the pipeline spec (a new pipeline, or a new version of the pipeline of
the same name), replaces any recurring run of the same name in the experiment
(disabled, then deleted) and creates the recurring run with a cron schedule,
a bound on concurrent runs and no catch-up. ``list_runs`` lists recent runs.
"""

import dataclasses
import json
import os
import tempfile
import time
from typing import Any, Dict, List, Optional

MAX_CONCURRENCY_LIMIT = 10  # KFP refuses more than 10 concurrent runs of a recurring run.


class ScheduleError(ValueError):
    """A bad argument or an unreachable server; the message says which."""


@dataclasses.dataclass(frozen=True)
class Scheduled:
    experiment_id: str
    pipeline_id: str
    version_id: str
    recurring_run_id: str
    replaced: List[str]  # ids of the recurring runs of the same name that were removed


def connect(host: str, namespace: Optional[str] = None, token: Optional[str] = None):
    """A ``kfp.Client`` on ``host`` (e.g. http://127.0.0.1:8888 after a port-forward)."""
    import urllib.error
    import urllib.request

    import kfp
    try:  # One quick probe: kfp.Client retries an unreachable host for minutes.
        urllib.request.urlopen(f"{host.rstrip('/')}/apis/v2beta1/healthz", timeout=15).close()
    except urllib.error.HTTPError:
        pass  # Reachable (e.g. 401 before authentication): the client takes it from here.
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ScheduleError(f"cannot reach Kubeflow Pipelines at {host}: {e}") from e
    try:  # The client checks the server's health endpoint when it starts.
        return kfp.Client(host=host, existing_token=token,
                          **({"namespace": namespace} if namespace else {}))
    except Exception as e:  # urllib3/kfp raise many kinds; the host is what the user fixes.
        raise ScheduleError(f"cannot reach Kubeflow Pipelines at {host}: {e}") from e


def check_cron(cron: str) -> str:
    """KFP's cron format has 6 fields, seconds first (``0 0 3 * * *``: every day at 03:00)."""
    fields = cron.split()
    if len(fields) != 6:
        raise ScheduleError(f"--cron {cron!r}: KFP expects 6 fields (second minute hour "
                            f"day-of-month month day-of-week), got {len(fields)}")
    return " ".join(fields)


def parse_parameters(items: List[str]) -> Dict[str, Any]:
    """``NAME=VALUE`` pairs; a VALUE that parses as JSON (a list, a number) is taken as such."""
    values = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise ScheduleError(f"--param {item!r}: expected NAME=VALUE")
        try:
            values[name] = json.loads(raw)
        except json.JSONDecodeError:
            values[name] = raw
    return values


def load_job(spec_file: str) -> Dict[str, Any]:
    """The compiled pipeline job (``msmt kubeflow compile``)."""
    try:
        with open(spec_file) as f:
            job = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ScheduleError(f"--spec {spec_file}: not a readable pipeline spec JSON: {e}") from e
    if "pipelineSpec" not in job:
        raise ScheduleError(f"--spec {spec_file}: no 'pipelineSpec' (write it with "
                            "`msmt kubeflow compile`)")
    return job


def upload(client, job: Dict[str, Any], version: Optional[str] = None):
    """Uploads the spec: ``(pipeline_id, version_id)``.

    A new pipeline (named after the spec) if none has its name, else a new
    version of it, named ``version`` (default: the pipeline name and the time).
    """
    name = job["pipelineSpec"]["pipelineInfo"]["name"]
    version = version or f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tempfile.TemporaryDirectory() as tmp:
        # KFP reads a package whose first YAML document is the PipelineSpec (JSON is YAML).
        path = os.path.join(tmp, "pipeline.yaml")
        with open(path, "w") as f:
            json.dump(job["pipelineSpec"], f)
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:
            pipeline_id = client.upload_pipeline(path, pipeline_name=name).pipeline_id
            versions = client.list_pipeline_versions(
                pipeline_id, page_size=1, sort_by="created_at desc").pipeline_versions or []
            if not versions:
                raise ScheduleError(f"pipeline {name!r} ({pipeline_id}) was uploaded but the "
                                    "server lists no version of it")
            return pipeline_id, versions[0].pipeline_version_id
        uploaded = client.upload_pipeline_version(path, pipeline_version_name=version,
                                                  pipeline_id=pipeline_id)
        return pipeline_id, uploaded.pipeline_version_id


def recurring_runs_named(client, experiment_id: str, name: str) -> List[Any]:
    found, token = [], ""
    while True:
        page = client.list_recurring_runs(page_token=token, page_size=100,
                                          experiment_id=experiment_id)
        found += [r for r in (page.recurring_runs or []) if r.display_name == name]
        token = page.next_page_token
        if not token:
            return found


def schedule(client, job: Dict[str, Any], experiment: str, cron: str, max_concurrency: int = 1,
             version: Optional[str] = None, name: Optional[str] = None,
             pipeline_root: Optional[str] = None,
             parameters: Optional[Dict[str, Any]] = None) -> Scheduled:
    """Creates, or replaces, the recurring run ``name`` (default: the pipeline's name)."""
    cron = check_cron(cron)
    if not 1 <= max_concurrency <= MAX_CONCURRENCY_LIMIT:
        raise ScheduleError(f"--max-concurrency must be in 1..{MAX_CONCURRENCY_LIMIT}, "
                            f"got {max_concurrency}")
    spec = job["pipelineSpec"]
    declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    unknown = sorted(set(parameters or {}) - set(declared))
    if unknown:
        raise ScheduleError(f"unknown runtime parameter(s) {unknown}; the spec declares "
                            f"{sorted(declared)}")
    values = {**job.get("runtimeConfig", {}).get("parameterValues", {}), **(parameters or {})}
    name = name or spec["pipelineInfo"]["name"]
    experiment_id = client.create_experiment(experiment).experiment_id  # Gets it if it exists.
    pipeline_id, version_id = upload(client, job, version)
    replaced = []
    for old in recurring_runs_named(client, experiment_id, name):
        client.disable_recurring_run(old.recurring_run_id)
        client.delete_recurring_run(old.recurring_run_id)
        replaced.append(old.recurring_run_id)
    created = client.create_recurring_run(
        experiment_id=experiment_id, job_name=name, cron_expression=cron,
        max_concurrency=max_concurrency, no_catchup=True, pipeline_id=pipeline_id,
        version_id=version_id, params=values,
        pipeline_root=pipeline_root or spec.get("defaultPipelineRoot"), enabled=True)
    return Scheduled(experiment_id, pipeline_id, version_id, created.recurring_run_id, replaced)


def list_runs(client, experiment: Optional[str] = None, limit: int = 10) -> List[Dict[str, str]]:
    """The ``limit`` most recent runs (of one experiment): id, name, state, created."""
    experiment_id = None
    if experiment:
        try:
            experiment_id = client.get_experiment(experiment_name=experiment).experiment_id
        except ValueError as e:
            raise ScheduleError(f"--experiment {experiment!r}: {e}") from e
    runs = client.list_runs(page_size=limit, sort_by="created_at desc",
                            experiment_id=experiment_id).runs or []
    return [{"id": r.run_id, "name": r.display_name, "state": r.state,
             "created": str(r.created_at)} for r in runs]
