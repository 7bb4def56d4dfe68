"""The command every task of the compiled spec runs: TFX's Kubeflow V2 entrypoint, plus two things.

``python -m kubeflow.container_entrypoint MODULE [ARGS] --beam_pipeline_args JSON_LIST``

1. The Beam arguments arrive as one runtime parameter, a JSON list that KFP
   substitutes for ``{{$.inputs.parameters['beam_pipeline_args']}}``. They are
   spliced back into separate arguments (what TFX's entrypoint expects) and the
   parameter is removed from the executor input, so no executor sees it as an
   execution property.
2. This project's artifact types are registered with TFX's Kubeflow V2 type
   lookup, which only knows TFX's own types by schema title (``msmt.FeatureSelection``
   would otherwise be imported as a module path and fail).

MODULE is TFX's executor entrypoint (``tfx.orchestration.kubeflow.v2.container.
kubeflow_v2_run_executor``) or ExampleGen's driver (``...file_based_example_gen.driver``).
"""

import json
import os
import runpy
import sys
from typing import List, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

BEAM_ARGS_FLAG = "--beam_pipeline_args"
BEAM_ARGS_PARAMETER = "beam_pipeline_args"
EXECUTOR_INPUT_FLAG = "--json_serialized_invocation_args"

# Schema title -> class path, for the project's own artifact types.
ARTIFACT_TYPES = {"msmt.FeatureSelection": "components.feature_selector.artifact.FeatureSelection"}


def split_arguments(argv: List[str]) -> Tuple[str, List[str]]:
    """``(module, arguments for it)`` with the Beam arguments spliced in and their
    parameter dropped from the executor input."""
    if not argv:
        raise SystemExit("usage: python -m kubeflow.container_entrypoint MODULE [ARGS]")
    module, args = argv[0], list(argv[1:])
    beam_args: List[str] = []
    if BEAM_ARGS_FLAG in args:
        i = args.index(BEAM_ARGS_FLAG)
        value = args[i + 1]
        del args[i:i + 2]
        beam_args = json.loads(value) if value.strip() else []
        if not isinstance(beam_args, list) or not all(isinstance(a, str) for a in beam_args):
            raise SystemExit(f"{BEAM_ARGS_PARAMETER} must be a JSON list of strings, got {value!r}")
    if EXECUTOR_INPUT_FLAG in args:
        i = args.index(EXECUTOR_INPUT_FLAG) + 1
        executor_input = json.loads(args[i])
        inputs = executor_input.get("inputs", {})
        for key in ("parameterValues", "parameters"):
            inputs.get(key, {}).pop(BEAM_ARGS_PARAMETER, None)
        args[i] = json.dumps(executor_input)
    return module, args + beam_args


def register_artifact_types() -> None:
    from tfx.orchestration.kubeflow.v2 import compiler_utils
    compiler_utils.TITLE_TO_CLASS_PATH.update(ARTIFACT_TYPES)


def main(argv: List[str]) -> None:
    module, args = split_arguments(argv)
    register_artifact_types()
    sys.argv = [module] + args
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
