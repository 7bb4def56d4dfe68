"""Keras layers for multi-scenario multi-task models, one concept per layer."""

from models.autograph import leave_tf_keras_unconverted

leave_tf_keras_unconverted()

from models.layers.core import (FieldEmbedding, MLP, ParallelMLP, ScenarioSelect,
                                SoftmaxGate, TaskProbabilities, flatten_fields,
                                mix_experts)
from models.layers.mmoe import MultiScenarioMMoE
from models.layers.ple import CGC, PLE, ExtractionLayer
from models.layers.shared_bottom import SharedBottom
from models.layers.star import (STAR, PartitionedNormalization, ScenarioAuxiliaryNetwork,
                                StarTopologyDense)
from models.layers.aesm2 import AESM2, ExpertSelectionGate, MultiScenarioLayer, MultiTaskLayer
from models.layers.hinet import HiNet, ScenarioAwareAttention, ScenarioCGC, SubExpertIntegration
from models.layers.automtl import AutoMTLDerived, AutoMTLSupernet, ChoiceBlock
from models.layers.selection import ScenarioFieldMask, ValueMask

__all__ = ["FieldEmbedding", "MLP", "ParallelMLP", "ScenarioSelect", "SoftmaxGate",
           "TaskProbabilities", "flatten_fields", "mix_experts", "MultiScenarioMMoE",
           "CGC", "PLE", "ExtractionLayer", "SharedBottom", "STAR", "PartitionedNormalization",
           "ScenarioAuxiliaryNetwork", "StarTopologyDense", "AESM2", "ExpertSelectionGate",
           "MultiScenarioLayer", "MultiTaskLayer", "HiNet", "ScenarioAwareAttention",
           "ScenarioCGC", "SubExpertIntegration", "AutoMTLDerived", "AutoMTLSupernet",
           "ChoiceBlock", "ScenarioFieldMask", "ValueMask"]
