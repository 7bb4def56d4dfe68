"""Runs a compiled Kubeflow pipeline job locally: a stand-in for the KFP driver and launcher.

It executes every task of the spec in dependency order as a local subprocess,
with exactly the command and arguments the spec gives the task's container,
doing what KFP's driver and launcher do on a cluster:

- resolves placeholders: ``{{$}}`` (the task's ``ExecutorInput`` JSON) and
  ``{{$.inputs.parameters['NAME']}}``;
- binds parameters: constants of the task, pipeline parameters (the spec's
  defaults, overridden by ``parameter_values``) and the pipeline root;
- gives each output artifact a URI ``<pipeline_root>/<pipeline>/<run_id>/<task>/<key>``,
  wires input artifacts from the producers' outputs as read back from each
  task's ``ExecutorOutput`` file (URIs and metadata such as split names);
- runs a container's ``lifecycle.preCacheCheck`` (ExampleGen's driver) before
  the container;
- answers resolver tasks (``outputArtifactQueries``, e.g. the latest blessed
  model) from the artifacts of earlier runs under the same pipeline root, kept
  in ``<pipeline_root>/local_launcher/artifacts.jsonl`` in place of KFP's ML
  Metadata. On a first run they resolve to nothing.

What it does not do: caching, retries, resource limits, parallel branches, and
the KFP placeholders this pipeline does not use (it fails naming them).
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGISTRY = os.path.join("local_launcher", "artifacts.jsonl")
_PARAMETER = re.compile(r"\{\{\$\.inputs\.parameters\['([^']+)'\]\}\}")
_INPUT_METADATA = re.compile(
    r"\{\{\$\.inputs\.artifacts\['([^']+)'\]\.metadata\['([^']+)'\]\}\}")


class TaskFailed(RuntimeError):
    """A task's process exited with an error; the message names the task and its log."""


@dataclasses.dataclass
class LocalRun:
    run_id: str
    run_dir: str  # <pipeline_root>/<pipeline>/<run_id>
    outputs: Dict[str, Dict[str, List[Dict[str, Any]]]]  # task -> key -> RuntimeArtifacts
    seconds: Dict[str, float]  # task -> wall time


def task_order(spec: Dict[str, Any]) -> List[str]:
    """The root DAG's tasks, each after every task it depends on (stable by name)."""
    tasks = spec["root"]["dag"]["tasks"]
    needs = {name: set(task.get("dependentTasks", [])) | {
        a["taskOutputArtifact"]["producerTask"]
        for a in task.get("inputs", {}).get("artifacts", {}).values()
        if "taskOutputArtifact" in a} for name, task in tasks.items()}
    order: List[str] = []
    while len(order) < len(tasks):
        ready = sorted(n for n in tasks if n not in order and needs[n] <= set(order))
        if not ready:
            raise ValueError(f"the spec's tasks have a cycle: {sorted(set(tasks) - set(order))}")
        order.append(ready[0])
    return order


def pipeline_parameters(spec: Dict[str, Any], overrides: Optional[Dict[str, Any]]
                        ) -> Dict[str, Any]:
    """The pipeline's parameters: the spec's defaults, overridden by ``overrides``."""
    definitions = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    unknown = set(overrides or {}) - set(definitions)
    if unknown:
        raise ValueError(f"unknown pipeline parameter(s) {sorted(unknown)}; the spec has "
                         f"{sorted(definitions)}")
    values = {name: d["defaultValue"] for name, d in definitions.items() if "defaultValue" in d}
    values.update(overrides or {})
    missing = sorted(n for n, d in definitions.items()
                     if n not in values and not d.get("isOptional"))
    if missing:
        raise ValueError(f"pipeline parameter(s) {missing} have no default: give a value")
    return values


def _constant(value: Dict[str, Any]) -> Any:
    if "constant" in value:  # Pipeline spec 2.1: a google.protobuf.Value.
        return value["constant"]
    constant = value["constantValue"]  # 2.0: {"stringValue": ...} or {"intValue": ...}
    kind, raw = next(iter(constant.items()))
    return int(raw) if kind == "intValue" else raw


def _schema_title(artifact_type: Dict[str, Any]) -> str:
    if "schemaTitle" in artifact_type:
        return artifact_type["schemaTitle"]
    match = re.search(r"^title:\s*(\S+)", artifact_type.get("instanceSchema", ""), re.M)
    return match.group(1) if match else "tfx.Artifact"


def _substitute(arg: str, executor_input: Dict[str, Any], parameters: Dict[str, Any]) -> str:
    if arg == "{{$}}":
        return json.dumps(executor_input)

    def parameter(match):
        value = parameters[match.group(1)]
        return value if isinstance(value, str) else json.dumps(value)
    arg = _PARAMETER.sub(parameter, arg)
    if "{{$" in arg:
        raise NotImplementedError(f"placeholder not supported by the local launcher: {arg!r}")
    return arg


class _Registry:
    """The artifacts of every run under a pipeline root (KFP keeps them in ML Metadata)."""

    def __init__(self, pipeline_root: str):
        self.path = os.path.join(pipeline_root, REGISTRY)

    def all(self) -> List[Dict[str, Any]]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def add(self, artifacts: List[Dict[str, Any]]) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "a") as f:
            for a in artifacts:
                f.write(json.dumps(a) + "\n")

    def query(self, query: str, inputs: Dict[str, List[Dict[str, Any]]]) -> List[Dict[str, Any]]:
        """The latest artifact matching a resolver's filter (``A AND B``; ``key=value``)."""
        clauses = []
        for clause in query.split(" AND "):
            key, _, value = clause.strip().partition("=")
            value = value.strip().strip('"')
            metadata = _INPUT_METADATA.fullmatch(value)
            if metadata:  # A value read from an input artifact: none there, no match.
                given = inputs.get(metadata.group(1)) or []
                if not given or metadata.group(2) not in given[0].get("metadata", {}):
                    return []
                value = str(given[0]["metadata"][metadata.group(2)])
            clauses.append((key.strip(), value))

        def matches(artifact: Dict[str, Any]) -> bool:
            for key, value in clauses:
                if key == "schema_title":
                    ok = _schema_title(artifact["type"]) == value
                elif key == "state":
                    ok = value == "LIVE"
                elif key == "name":
                    ok = artifact["name"] == value
                elif key.startswith("metadata.") and key.endswith(".number_value"):
                    field = key[len("metadata."):-len(".number_value")]
                    ok = artifact.get("metadata", {}).get(field) == float(value)
                else:
                    raise NotImplementedError(f"resolver filter clause {key!r} in {query!r}")
                if not ok:
                    return False
            return True
        found = [a for a in self.all() if matches(a)]
        return found[-1:]


def run_job(job: Dict[str, Any], pipeline_root: Optional[str] = None,
            parameter_values: Optional[Dict[str, Any]] = None, run_id: Optional[str] = None,
            env: Optional[Dict[str, str]] = None, cwd: str = REPO_DIR,
            timeout_s: Optional[float] = None) -> LocalRun:
    """Runs the pipeline job (the compiled JSON) to completion and returns its artifacts."""
    spec = job.get("pipelineSpec", job)
    pipeline_root = (pipeline_root or spec.get("defaultPipelineRoot")
                     or job.get("runtimeConfig", {}).get("gcsOutputDirectory"))
    if not pipeline_root:
        raise ValueError("no pipeline root: give one or compile it into the spec")
    parameters = pipeline_parameters(spec, parameter_values)
    run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
    run_dir = os.path.join(pipeline_root, spec["pipelineInfo"]["name"], run_id)
    registry = _Registry(pipeline_root)
    process_env = dict(os.environ if env is None else env)
    # The image puts the project's virtualenv first on PATH: so does this "container".
    process_env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + process_env.get("PATH", "")
    result = LocalRun(run_id, run_dir, {}, {})
    for name in task_order(spec):
        task = spec["root"]["dag"]["tasks"][name]
        component = spec["components"][task["componentRef"]["name"]]
        executor = spec["deploymentSpec"]["executors"][component["executorLabel"]]
        inputs = {key: list(result.outputs[a["taskOutputArtifact"]["producerTask"]].get(
                      a["taskOutputArtifact"]["outputArtifactKey"], []))
                  for key, a in task.get("inputs", {}).get("artifacts", {}).items()}
        start = time.time()
        if "resolver" in executor:
            result.outputs[name] = {
                key: registry.query(q["filter"], inputs)
                for key, q in executor["resolver"]["outputArtifactQueries"].items()}
        elif "container" in executor:
            result.outputs[name] = _run_container(
                name, task, component, executor["container"], inputs, parameters, run_dir,
                process_env, cwd, timeout_s)
            registry.add([a for artifacts in result.outputs[name].values() for a in artifacts])
        else:
            raise NotImplementedError(f"task {name!r}: executor kind {sorted(executor)} is not "
                                      "supported by the local launcher")
        result.seconds[name] = time.time() - start
    return result


def _run_container(name, task, component, container, inputs, pipeline_parameters, run_dir,
                   env, cwd, timeout_s) -> Dict[str, List[Dict[str, Any]]]:
    task_dir = os.path.join(run_dir, name)
    os.makedirs(task_dir, exist_ok=True)
    parameters = {}
    for key, value in task.get("inputs", {}).get("parameters", {}).items():
        if "runtimeValue" in value:
            parameters[key] = _constant(value["runtimeValue"])
        elif "componentInputParameter" in value:
            if value["componentInputParameter"] in pipeline_parameters:
                parameters[key] = pipeline_parameters[value["componentInputParameter"]]
        else:
            raise NotImplementedError(f"task {name!r}: parameter {key!r} binding {value}")
    outputs = {
        key: [{"name": f"{os.path.basename(run_dir)}/{name}/{key}", "type": d["artifactType"],
               "uri": os.path.join(task_dir, key), "metadata": {}}]
        for key, d in component.get("outputDefinitions", {}).get("artifacts", {}).items()}
    output_file = os.path.join(task_dir, "executor_output.json")
    executor_input = {
        "inputs": {"parameterValues": parameters,
                   "artifacts": {k: {"artifacts": v} for k, v in inputs.items() if v}},
        "outputs": {"artifacts": {k: {"artifacts": v} for k, v in outputs.items()},
                    "outputFile": output_file}}
    steps = [container.get("lifecycle", {}).get("preCacheCheck"), container]
    log_path = os.path.join(task_dir, "log.txt")
    for step in filter(None, steps):
        command = [_substitute(a, executor_input, parameters)
                   for a in step.get("command", []) + step.get("args", [])]
        with open(log_path, "a") as log:
            log.write("$ " + " ".join(command[:4]) + " ...\n")
            log.flush()
            code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=cwd, timeout=timeout_s)
        if code != 0:
            with open(log_path) as log:
                tail = log.read()[-3000:]
            raise TaskFailed(f"task {name!r} exited with {code}; log {log_path}:\n{tail}")
    if os.path.exists(output_file):
        with open(output_file) as f:
            written = json.load(f).get("artifacts", {})
        for key, artifacts in written.items():
            for mine, theirs in zip(outputs.get(key, []), artifacts.get("artifacts", [])):
                mine["uri"] = theirs.get("uri", mine["uri"])
                mine["metadata"] = theirs.get("metadata", {})
    return outputs


def main(argv: Optional[List[str]] = None) -> int:
    import argparse
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec", help="compiled pipeline job JSON (msmt kubeflow compile)")
    p.add_argument("--pipeline-root")
    p.add_argument("--param", action="append", default=[], metavar="NAME=JSON_OR_STRING")
    args = p.parse_args(argv)
    values = {}
    for item in args.param:
        key, _, raw = item.partition("=")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    with open(args.spec) as f:
        run = run_job(json.load(f), args.pipeline_root, values)
    for task, seconds in run.seconds.items():
        print(f"{task}: {seconds:.1f} s")
    print(f"Run {run.run_id}: {run.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
