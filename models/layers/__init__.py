"""Keras layers for multi-scenario multi-task models, one concept per layer."""

from models.layers.core import (FieldEmbedding, MLP, ParallelMLP, ScenarioSelect,
                                SoftmaxGate, TaskProbabilities, flatten_fields,
                                mix_experts)
from models.layers.mmoe import MultiScenarioMMoE

__all__ = ["FieldEmbedding", "MLP", "ParallelMLP", "ScenarioSelect", "SoftmaxGate",
           "TaskProbabilities", "flatten_fields", "mix_experts", "MultiScenarioMMoE"]
