"""The MSMT TFX pipeline: multi-scenario multi-task recommendation with feature selection.

Install with ./setup.sh (a virtualenv from the pinned lock file); the dependency
ranges below document what the code needs, the lock file pins what is tested.
"""

from setuptools import find_packages, setup

setup(
    name="msmt-tfx",
    version="0.1.0",
    description="TFX pipeline for multi-scenario, multi-task recommendation with feature selection",
    python_requires=">=3.10,<3.12",
    packages=find_packages(include=["pipeline", "pipeline.*", "components", "components.*",
                                    "models", "models.*", "kubeflow", "kubeflow.*"]),
    install_requires=[
        "tfx==1.16.0",
        "tensorflow>=2.16,<2.17",
        "tf-keras>=2.16,<2.17",
        "tensorflow-transform>=1.16,<1.17",
        "tensorflow-model-analysis>=0.47,<0.48",
        "tensorflow-data-validation>=1.16,<1.17",
        "tensorflow-recommenders>=0.7.3",
        "apache-beam>=2.60",
        "scikit-learn>=1.3",
        "pyyaml>=6",
        "tabulate>=0.9",
        "dill",
    ],
    entry_points={"console_scripts": ["msmt=pipeline.cli:main"]},
)
