"""AutoMTL (differentiable architecture search for multi-task recommendation), MSMT adaptation.

The search space of the paper (Sec. 3.3, Table 1): a feature-interaction choice
block over the field embeddings, heterogeneous experts made of choice blocks, and
expert-selection parameters ``beta`` per task. In the multi-scenario adaptation a
"task" is a (scenario, task) head, so scenario ``s``'s ``beta`` rows and towers are
only read by examples of ``s``.

Candidate operations are named by strings (``"cross_2"``, ``"mlp_64"``, ...), so a
choice block, a supernet and a derived network are fully described by their
configs. ``make_operation`` turns a name into a layer:

====================  ====================================================  =========
name                  operation                                             family
====================  ====================================================  =========
``inner_product``     PNN product layer, inner products (Qu et al. 2016)    interaction
``outer_product``     PNN product layer, sum-pooled outer product           interaction
``cross_<n>``         ``n`` DCN cross layers (``tfrs.layers.dcn.Cross``)    interaction
``attention_<h>``     self-attention over fields with ``h`` heads (AutoInt) interaction
``mlp_<u>``           width-preserving MLP with ``u`` hidden units          both
``bit_gate``          bit-level gating layer (GateNet)                      expert
``conv_<k>``          1D convolution with kernel size ``k``                 expert
``skip``              skip connection (identity; flattens the fields)       both
====================  ====================================================  =========

Interaction operations map ``[batch, num_fields, embedding_dim]`` to
``[batch, num_fields * embedding_dim]``; expert operations map ``[batch, d]`` to
``[batch, d]`` (or, with ``num_parallel`` copies, ``[batch, num_parallel, d]`` to the
same). Equal output shapes are what lets a choice block mix them.

Composition: ``ChoiceBlock`` (softmax(alpha) mixture) -> ``SupernetExperts`` (every
expert's choice blocks) -> ``AutoMTLSupernet`` (with ``beta`` and the JSD loss); the
search (``models.automtl_search``) derives an ``AutoMTLDerived``: the chosen
operations, ``HeterogeneousExpert``s and gates over each head's selected experts.
"""

import re
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras as keras

from models.layers.core import ParallelMLP, SoftmaxGate, flatten_fields

# The paper's candidate lists (Table 1).
INTERACTION_OPS = ("inner_product", "outer_product", "cross_1", "cross_2", "cross_3", "cross_4",
                   "attention_1", "attention_2", "attention_4", "attention_8", "mlp_64",
                   "mlp_128", "mlp_256", "mlp_512", "mlp_1024", "skip")
EXPERT_OPS = ("bit_gate", "mlp_16", "mlp_32", "mlp_64", "mlp_128", "mlp_256", "mlp_512",
              "mlp_1024", "conv_3", "conv_5", "conv_7", "skip")

# Operation kinds allowed in each family: fixed names and parameterised prefixes.
_FIXED = {"interaction": ("inner_product", "outer_product", "skip"), "expert": ("bit_gate", "skip")}
_PARAMETERISED = {"interaction": ("cross", "attention", "mlp"), "expert": ("mlp", "conv")}
_NAME = re.compile(r"^([a-z]+)_([1-9][0-9]*)$")


def check_operation(name, family: str) -> Optional[str]:
    """``None`` if ``name`` is a valid ``family`` ("interaction"/"expert") operation, else why."""
    if not isinstance(name, str):
        return f"operation names are strings, got {name!r}"
    if name in _FIXED[family]:
        return None
    match = _NAME.match(name)
    if match and match.group(1) in _PARAMETERISED[family]:
        return None
    known = list(_FIXED[family]) + [f"{p}_<n>" for p in _PARAMETERISED[family]]
    return f"unknown {family} operation {name!r}; known: {', '.join(known)}"


def _flat(x):
    """``[B, F, D] -> [B, F * D]``; a ``[B, d]`` input is returned as is."""
    return flatten_fields(x) if x.shape.rank == 3 else x


# --------------------------------------------------------------------------- interaction ops


@keras.utils.register_keras_serializable(package="msmt")
class ProductLayer(keras.layers.Layer):
    """PNN's product layer (Qu et al., ICDM'16, eq. 3): ``relu(W_z z + W_p p + b)``.

    ``z`` are the linear signals (the flattened field embeddings) and ``p`` the
    quadratic ones: ``kind="inner"`` takes the pairwise inner products
    ``<e_i, e_j>`` (``i < j``, IPNN); ``kind="outer"`` takes the outer product of
    the summed embeddings ``f_S f_S^T`` with ``f_S = sum_i e_i`` (OPNN with
    superposition, Sec. 3.3 of PNN).

    Input: ``[batch, num_fields, embedding_dim]``. Output:
    ``[batch, num_fields * embedding_dim]`` (the interaction block's width).
    """

    def __init__(self, kind: str = "inner", **kwargs):
        super().__init__(**kwargs)
        if kind not in ("inner", "outer"):
            raise ValueError(f"kind must be 'inner' or 'outer', got {kind!r}")
        self.kind = kind

    def build(self, input_shape):
        num_fields, dim = int(input_shape[1]), int(input_shape[2])
        if self.kind == "inner":
            rows, cols = np.triu_indices(num_fields, k=1)
            self._pairs = tf.constant(rows * num_fields + cols, tf.int32)
            num_products = len(rows)
        else:
            num_products = dim * dim
        width = num_fields * dim
        self.kernel = self.add_weight(name="kernel", shape=(width + num_products, width),
                                      initializer=keras.initializers.GlorotUniform())
        self.bias = self.add_weight(name="bias", shape=(width,), initializer="zeros")
        super().build(input_shape)

    def call(self, embedded):
        z = flatten_fields(embedded)
        if self.kind == "inner":
            gram = tf.matmul(embedded, embedded, transpose_b=True)  # [B, F, F]
            gram = tf.reshape(gram, [-1, gram.shape[1] * gram.shape[2]])
            p = tf.gather(gram, self._pairs, axis=1)  # <e_i, e_j>, i < j
        else:
            f_sum = tf.reduce_sum(embedded, axis=1)  # [B, D]
            p = tf.reshape(tf.einsum("bi,bj->bij", f_sum, f_sum), [-1, f_sum.shape[-1] ** 2])
        return tf.nn.relu(tf.matmul(tf.concat([z, p], axis=-1), self.kernel) + self.bias)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind}


@keras.utils.register_keras_serializable(package="msmt")
class CrossNetwork(keras.layers.Layer):
    """``num_layers`` stacked DCN cross layers, ``tfrs.layers.dcn.Cross`` (DCN-V2, eq. 1).

    ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l`` on the flattened fields.
    Input: ``[batch, num_fields, embedding_dim]`` or ``[batch, d]``. Output: ``[batch, d]``.
    """

    def __init__(self, num_layers: int = 1, **kwargs):
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_layers = int(num_layers)
        self._cross = [tfrs.layers.dcn.Cross(name=f"cross_{i}") for i in range(self.num_layers)]

    def call(self, inputs):
        x0 = x = _flat(inputs)
        for cross in self._cross:
            x = cross(x0, x)
        return x

    def get_config(self):
        return {**super().get_config(), "num_layers": self.num_layers}


@keras.utils.register_keras_serializable(package="msmt")
class FieldSelfAttention(keras.layers.Layer):
    """Multi-head self-attention over the fields, AutoInt's interacting layer (eq. 5-8).

    Per head ``h``: ``a_mk = softmax_k(<W_Q e_m, W_K e_k>)``,
    ``e~_m = sum_k a_mk W_V e_k``; then
    ``e_res_m = relu(sum_h W_O^h e~_m^h + e_m)`` (the residual keeps ``embedding_dim``).
    The head size is ``max(1, embedding_dim // num_heads)``.

    Input: ``[batch, num_fields, embedding_dim]``. Output:
    ``[batch, num_fields * embedding_dim]``.
    """

    def __init__(self, num_heads: int = 1, **kwargs):
        super().__init__(**kwargs)
        if num_heads < 1:
            raise ValueError(f"num_heads must be >= 1, got {num_heads}")
        self.num_heads = int(num_heads)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        head = max(1, dim // self.num_heads)
        init = keras.initializers.GlorotUniform()
        self.w_qkv = self.add_weight(name="w_qkv", shape=(3, dim, self.num_heads, head),
                                     initializer=init)  # W_Q, W_K, W_V.
        self.w_o = self.add_weight(name="w_o", shape=(self.num_heads, head, dim), initializer=init)
        self._scale = 1.0 / float(np.sqrt(head))
        super().build(input_shape)

    def call(self, embedded):
        q, k, v = tf.unstack(tf.einsum("bfd,cdhk->cbhfk", embedded, self.w_qkv))
        attention = tf.nn.softmax(tf.einsum("bhmk,bhnk->bhmn", q, k) * self._scale, axis=-1)
        heads = tf.einsum("bhmn,bhnk->bhmk", attention, v)
        out = tf.nn.relu(tf.einsum("bhmk,hkd->bmd", heads, self.w_o) + embedded)
        return flatten_fields(out)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads}


# --------------------------------------------------------------------------- ops of both families
#
# Expert operations take ``num_parallel``: with it they hold that many independent
# copies (weights with a leading ``[num_parallel]`` axis) and map
# ``[batch, num_parallel, d]`` to ``[batch, num_parallel, d]``, copy ``p`` reading
# slice ``p`` (one batched op per layer, like ``ParallelMLP``); the supernet runs
# every expert's block ``j`` this way. Without it they map ``[batch, d]`` to ``[batch, d]``.


def _dense(x, kernel, bias, parallel: bool):
    if parallel:
        return tf.einsum("bpi,pio->bpo", x, kernel) + bias
    return tf.matmul(x, kernel) + bias


@keras.utils.register_keras_serializable(package="msmt")
class WidthPreservingMLP(keras.layers.Layer):
    """An MLP block with one hidden layer that keeps the input width (Table 1's "MLP").

    ``relu(W_2 relu(W_1 x + b_1) + b_2)`` with ``hidden_units`` rows in ``W_1``.
    Input: ``[batch, d]`` (``[batch, F, D]`` is flattened) or, with ``num_parallel``,
    ``[batch, num_parallel, d]``. Output: the input's (flattened) shape.
    """

    def __init__(self, hidden_units: int, num_parallel: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        if hidden_units < 1:
            raise ValueError(f"hidden_units must be >= 1, got {hidden_units}")
        self.hidden_units = int(hidden_units)
        self.num_parallel = None if num_parallel is None else int(num_parallel)

    def build(self, input_shape):
        parallel = () if self.num_parallel is None else (self.num_parallel,)
        width = int(input_shape[-1]) if parallel else int(np.prod(input_shape[1:]))
        init = keras.initializers.GlorotUniform()
        hidden = self.hidden_units
        self.kernel_1 = self.add_weight(name="kernel_1", shape=parallel + (width, hidden),
                                        initializer=init)
        self.bias_1 = self.add_weight(name="bias_1", shape=parallel + (hidden,),
                                      initializer="zeros")
        self.kernel_2 = self.add_weight(name="kernel_2", shape=parallel + (hidden, width),
                                        initializer=init)
        self.bias_2 = self.add_weight(name="bias_2", shape=parallel + (width,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        parallel = self.num_parallel is not None
        x = inputs if parallel else _flat(inputs)
        hidden = tf.nn.relu(_dense(x, self.kernel_1, self.bias_1, parallel))
        return tf.nn.relu(_dense(hidden, self.kernel_2, self.bias_2, parallel))

    def get_config(self):
        return {**super().get_config(), "hidden_units": self.hidden_units,
                "num_parallel": self.num_parallel}


@keras.utils.register_keras_serializable(package="msmt")
class SkipConnection(keras.layers.Layer):
    """The "skip-connection" candidate: identity (fields flattened), lets a block vanish.

    Input: ``[batch, F, D]`` (output ``[batch, F * D]``), ``[batch, d]`` or
    ``[batch, num_parallel, d]`` (output unchanged).
    """

    def __init__(self, num_parallel: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.num_parallel = None if num_parallel is None else int(num_parallel)

    def call(self, inputs):
        return inputs if self.num_parallel is not None else _flat(inputs)

    def get_config(self):
        return {**super().get_config(), "num_parallel": self.num_parallel}


# --------------------------------------------------------------------------- expert ops


@keras.utils.register_keras_serializable(package="msmt")
class BitLevelGate(keras.layers.Layer):
    """GateNet's bit-level gating layer (Huang et al. 2020): ``x * sigmoid(W x + b)``.

    Input and output: ``[batch, d]``, or ``[batch, num_parallel, d]`` with ``num_parallel``.
    """

    def __init__(self, num_parallel: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.num_parallel = None if num_parallel is None else int(num_parallel)

    def build(self, input_shape):
        parallel = () if self.num_parallel is None else (self.num_parallel,)
        width = int(input_shape[-1])
        self.kernel = self.add_weight(name="kernel", shape=parallel + (width, width),
                                      initializer=keras.initializers.GlorotUniform())
        self.bias = self.add_weight(name="bias", shape=parallel + (width,), initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        gate = _dense(inputs, self.kernel, self.bias, self.num_parallel is not None)
        return inputs * tf.sigmoid(gate)

    def get_config(self):
        return {**super().get_config(), "num_parallel": self.num_parallel}


@keras.utils.register_keras_serializable(package="msmt")
class FeatureConv1D(keras.layers.Layer):
    """A 1D convolution along the feature vector: one ``kernel_size`` filter, "same" padding.

    The vector is read as a length-``d``, one-channel sequence, as in the authors'
    expert block. Input and output: ``[batch, d]``, or ``[batch, num_parallel, d]``
    with ``num_parallel`` (one filter per copy: a depthwise convolution).
    """

    def __init__(self, kernel_size: int = 3, num_parallel: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.kernel_size = int(kernel_size)
        self.num_parallel = None if num_parallel is None else int(num_parallel)

    def build(self, input_shape):
        parallel = () if self.num_parallel is None else (self.num_parallel,)
        self.kernel = self.add_weight(name="kernel", shape=parallel + (self.kernel_size,),
                                      initializer=keras.initializers.GlorotUniform())
        self.bias = self.add_weight(name="bias", shape=parallel, initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        parallel = self.num_parallel is not None
        x = inputs if parallel else inputs[:, None, :]  # [B, P, d]
        kernel = tf.reshape(self.kernel, [-1, self.kernel_size])  # [P, k]
        channels = tf.transpose(x, [0, 2, 1])[:, None]  # [B, 1, d, P]: one channel per copy.
        filters = tf.transpose(kernel)[None, :, :, None]  # [1, k, P, 1]
        out = tf.nn.depthwise_conv2d(channels, filters, strides=[1, 1, 1, 1], padding="SAME")
        out = tf.transpose(out[:, 0], [0, 2, 1]) + tf.reshape(self.bias, [-1, 1])  # [B, P, d]
        return out if parallel else out[:, 0]

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size,
                "num_parallel": self.num_parallel}


def make_operation(op: str, num_parallel: Optional[int] = None, **kwargs) -> keras.layers.Layer:
    """The layer of a candidate operation name (see the module docstring).

    ``num_parallel`` (expert operations only): that many independent copies.
    """
    kwargs.setdefault("name", op)
    match = _NAME.match(op)
    kind = match.group(1) if match else op
    if num_parallel is not None and kind not in ("skip", "bit_gate", "mlp", "conv"):
        raise ValueError(f"{op!r} is not an expert operation, it has no parallel form")
    if op in ("inner_product", "outer_product"):
        return ProductLayer(op.split("_")[0], **kwargs)
    if op == "skip":
        return SkipConnection(num_parallel, **kwargs)
    if op == "bit_gate":
        return BitLevelGate(num_parallel, **kwargs)
    if match and kind in ("cross", "attention"):
        layer = CrossNetwork if kind == "cross" else FieldSelfAttention
        return layer(int(match.group(2)), **kwargs)
    if match and kind in ("mlp", "conv"):
        layer = WidthPreservingMLP if kind == "mlp" else FeatureConv1D
        return layer(int(match.group(2)), num_parallel=num_parallel, **kwargs)
    raise ValueError(f"unknown AutoMTL operation {op!r}")


# --------------------------------------------------------------------------- blocks and experts


@keras.utils.register_keras_serializable(package="msmt")
class ChoiceBlock(keras.layers.Layer):
    """A choice block: the softmax(alpha)-weighted mixture of candidate operations.

    AutoMTL Sec. 3.4.1, continuous relaxation:
    ``B(x) = sum_{o in O} exp(alpha_o) / sum_{o'} exp(alpha_o') * o(x)``.
    ``alpha`` (the architecture parameters) is a separate variable named ``alpha``;
    after the search the block becomes its ``chosen()`` (argmax) operation.

    Without ``num_parallel``: ``alpha`` ``[num_candidates]``; input whatever the
    candidates take (``[batch, F, D]`` or ``[batch, d]``), output ``[batch, d_out]``.
    With ``num_parallel`` (expert operations): ``num_parallel`` independent choice
    blocks evaluated at once (block ``j`` of every expert), ``alpha``
    ``[num_parallel, num_candidates]``, input and output ``[batch, num_parallel, d]``.
    """

    def __init__(self, candidates: Sequence[str], num_parallel: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.candidates = [str(c) for c in candidates]
        self.num_parallel = None if num_parallel is None else int(num_parallel)
        if not self.candidates:
            raise ValueError("a choice block needs at least one candidate operation")
        if len(set(self.candidates)) != len(self.candidates):
            raise ValueError(f"duplicate candidate operations in {self.candidates}")
        self.candidate_layers = [make_operation(c, self.num_parallel) for c in self.candidates]

    def build(self, input_shape):
        parallel = () if self.num_parallel is None else (self.num_parallel,)
        self.alpha = self.add_weight(name="alpha", shape=parallel + (len(self.candidates),),
                                     initializer=keras.initializers.RandomNormal(stddev=1e-3))
        super().build(input_shape)

    def mixture_weights(self):
        """``softmax(alpha)`` over the candidates, ``alpha``'s shape."""
        return tf.nn.softmax(self.alpha, axis=-1)

    def candidate_outputs(self, inputs):
        """Every candidate's output: ``[batch, (num_parallel,) num_candidates, d_out]``."""
        axis = 1 if self.num_parallel is None else 2
        return tf.stack([op(inputs) for op in self.candidate_layers], axis=axis)

    def call(self, inputs):
        outputs = self.candidate_outputs(inputs)
        if self.num_parallel is None:
            return tf.einsum("m,bmd->bd", self.mixture_weights(), outputs)
        return tf.einsum("pm,bpmd->bpd", self.mixture_weights(), outputs)

    def chosen(self):
        """The argmax candidate (a list of them, one per copy, with ``num_parallel``)."""
        best = np.argmax(self.alpha.numpy(), axis=-1)
        if self.num_parallel is None:
            return self.candidates[int(best)]
        return [self.candidates[int(i)] for i in best]

    def get_config(self):
        return {**super().get_config(), "candidates": self.candidates,
                "num_parallel": self.num_parallel}


@keras.utils.register_keras_serializable(package="msmt")
class SupernetExperts(keras.layers.Layer):
    """The heterogeneous expert module of the supernet (Sec. 3.3.2), all experts at once.

    ``num_experts`` experts, each a stack of ``num_blocks`` choice blocks over the
    same ``candidates`` but with its own weights and ``alpha``: block ``j`` of every
    expert is one ``ChoiceBlock(num_parallel=num_experts)``.

    Input: ``[batch, expert_dim]`` (every expert reads it). Output:
    ``[batch, num_experts, expert_dim]``.
    """

    def __init__(self, num_experts: int, num_blocks: int, candidates: Sequence[str], **kwargs):
        super().__init__(**kwargs)
        if num_experts < 1 or num_blocks < 1:
            raise ValueError(f"need >= 1 experts and blocks, got {num_experts}, {num_blocks}")
        self.num_experts, self.num_blocks = int(num_experts), int(num_blocks)
        self.candidates = [str(c) for c in candidates]
        self.blocks = [ChoiceBlock(self.candidates, num_parallel=self.num_experts,
                                   name=f"block_{j}") for j in range(self.num_blocks)]

    def call(self, inputs):
        x = tf.tile(inputs[:, None, :], [1, self.num_experts, 1])
        for block in self.blocks:
            x = block(x)
        return x

    def chosen(self) -> List[List[str]]:
        """Per expert, the argmax operation of each of its blocks."""
        per_block = [block.chosen() for block in self.blocks]
        return [[ops[i] for ops in per_block] for i in range(self.num_experts)]

    def get_config(self):
        return {**super().get_config(), "num_experts": self.num_experts,
                "num_blocks": self.num_blocks, "candidates": self.candidates}


@keras.utils.register_keras_serializable(package="msmt")
class HeterogeneousExpert(keras.layers.Layer):
    """One derived expert: its chosen operation per block, in order (Fig. 6 of the paper).

    Input and output: ``[batch, expert_dim]``.
    """

    def __init__(self, operations: Sequence[str], **kwargs):
        super().__init__(**kwargs)
        self.operations = [str(op) for op in operations]
        if not self.operations:
            raise ValueError("an expert needs at least one block")
        self.block_layers = [make_operation(op, name=f"block_{j}_{op}")
                             for j, op in enumerate(self.operations)]

    def call(self, inputs):
        x = inputs
        for layer in self.block_layers:
            x = layer(x)
        return x

    def get_config(self):
        return {**super().get_config(), "operations": self.operations}


def jensen_shannon_loss(p):
    """AutoMTL's auxiliary loss (Sec. 3.4.2): the extended *negative* JS divergence.

    ``L_JSD = sum_i m_i log m_i - 1/K sum_k sum_i p_i^(k) log p_i^(k)`` with
    ``m = 1/K sum_k p^(k)``, for ``p`` ``[K, N]`` (the tasks' expert distributions).
    Minimising it spreads the tasks over different experts. Scalar, ``<= 0``.
    """
    eps = 1e-12
    m = tf.reduce_mean(p, axis=0)
    mean_neg_entropy = tf.reduce_mean(tf.reduce_sum(p * tf.math.log(p + eps), axis=-1))
    return tf.reduce_sum(m * tf.math.log(m + eps)) - mean_neg_entropy


class _AutoMTLBase(keras.layers.Layer):
    """What the supernet and the derived network share: the expert input and the towers."""

    def __init__(self, num_scenarios: int, num_tasks: int, expert_dim: int,
                 tower_units: Sequence[int], dropout: float, **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios, self.num_tasks = int(num_scenarios), int(num_tasks)
        self.expert_dim = int(expert_dim)
        self.tower_units = [int(u) for u in tower_units]
        self.dropout = float(dropout)
        self.num_heads = self.num_scenarios * self.num_tasks
        # The interaction block's output is projected to the experts' width (authors' code).
        self.projection = keras.layers.Dense(self.expert_dim, name="expert_input")
        self._dropout = keras.layers.Dropout(self.dropout)
        self.towers = ParallelMLP(self.num_heads, self.tower_units + [1], output_activation=None,
                                  name="towers")

    def _logits(self, mixed, training):
        logits = self.towers(mixed, training=training)  # [B, S*T, 1]
        return tf.reshape(logits, [-1, self.num_scenarios, self.num_tasks])

    def _head_rows(self, scenario: int) -> slice:
        return slice(scenario * self.num_tasks, (scenario + 1) * self.num_tasks)

    def _tower_parameters(self, scenario: int):
        heads = self._head_rows(scenario)
        return [(v, (heads,)) for v in self.towers.kernels + self.towers.biases]

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios,
                "num_tasks": self.num_tasks, "expert_dim": self.expert_dim,
                "tower_units": self.tower_units, "dropout": self.dropout}


@keras.utils.register_keras_serializable(package="msmt")
class AutoMTLSupernet(_AutoMTLBase):
    """AutoMTL's supernet (Fig. 2) with one expert-selection head per (scenario, task).

    embedded -> interaction ``ChoiceBlock`` -> Dense(``expert_dim``) ->
    ``SupernetExperts`` (``num_experts`` experts of ``num_expert_blocks`` choice
    blocks) -> per head ``f^k = sum_i softmax(beta^(k))_i E_i(x)`` (Sec. 3.4.1)
    -> tower. ``jsd_weight * L_JSD(softmax(beta))`` is added with ``add_loss``; the
    search lowers ``jsd_weight`` (a non-trainable variable) to 0.

    Parameter groups: ``architecture_variables()`` (every block's ``alpha``),
    ``expert_selection_variables()`` (``beta`` ``[heads, num_experts]``) and the rest,
    the network weights.

    Inputs: the backbone inputs (see ``models.factory``); reads ``embedded``.
    Output: ``task_logits`` ``[batch, num_scenarios, num_tasks]``.
    """

    def __init__(self, num_scenarios: int, num_tasks: int,
                 interaction_ops: Sequence[str] = INTERACTION_OPS,
                 expert_ops: Sequence[str] = EXPERT_OPS, num_experts: int = 4,
                 num_expert_blocks: int = 2, expert_dim: int = 32,
                 tower_units: Sequence[int] = (32,), dropout: float = 0.0,
                 jsd_weight: float = 1.0, **kwargs):
        super().__init__(num_scenarios, num_tasks, expert_dim, tower_units, dropout, **kwargs)
        self.interaction_ops = [str(op) for op in interaction_ops]
        self.expert_ops = [str(op) for op in expert_ops]
        self.num_experts = int(num_experts)
        self.num_expert_blocks = int(num_expert_blocks)
        self.jsd_weight = float(jsd_weight)
        self.interaction = ChoiceBlock(self.interaction_ops, name="interaction")
        self.experts = SupernetExperts(self.num_experts, self.num_expert_blocks, self.expert_ops,
                                       name="experts")

    def build(self, input_shape):
        self.beta = self.add_weight(name="beta", shape=(self.num_heads, self.num_experts),
                                    initializer=keras.initializers.RandomNormal(stddev=1e-3))
        self.jsd_weight_variable = self.add_weight(
            name="jsd_weight", shape=(), trainable=False,
            initializer=keras.initializers.Constant(self.jsd_weight))
        super().build(input_shape)

    def expert_distributions(self):
        """``p^(k) = softmax(beta^(k))``, ``[heads, num_experts]``."""
        return tf.nn.softmax(self.beta, axis=-1)

    @tf.autograph.experimental.do_not_convert  # No tensor control flow; converting is slow.
    def call(self, inputs, training=None):
        x = self.projection(self.interaction(inputs["embedded"]))  # [B, H]
        expert_outputs = self._dropout(self.experts(x), training=training)  # [B, E, H]
        p = self.expert_distributions()
        mixed = tf.einsum("ge,beh->bgh", p, expert_outputs)  # [B, S*T, H]
        self.add_loss(self.jsd_weight_variable * jensen_shannon_loss(p))
        return self._logits(mixed, training)

    def choice_blocks(self) -> Dict[str, ChoiceBlock]:
        """Every choice block by label: ``interaction``, ``expert_block_<j>`` (all experts')."""
        blocks = {"interaction": self.interaction}
        blocks.update({f"expert_block_{j}": b for j, b in enumerate(self.experts.blocks)})
        return blocks

    def architecture_variables(self) -> List[tf.Variable]:
        """The ``alpha`` of every choice block (trained on validation data)."""
        return [block.alpha for block in self.choice_blocks().values()]

    def expert_selection_variables(self) -> List[tf.Variable]:
        """``beta`` (trained on training data with the network weights after warm-up)."""
        return [self.beta]

    def scenario_parameters(self, scenario: int):
        """``(variable, index)`` pairs read only by examples of ``scenario``."""
        return [(self.beta, (self._head_rows(scenario),))] + self._tower_parameters(scenario)

    def get_config(self):
        return {**super().get_config(), "interaction_ops": self.interaction_ops,
                "expert_ops": self.expert_ops, "num_experts": self.num_experts,
                "num_expert_blocks": self.num_expert_blocks, "jsd_weight": self.jsd_weight}

    def diagnostics(self, inputs, training=False):
        """Named diagnostic tensors (``models/diagnostics.py``): ``gate_weights/experts``
        ``[batch, S * T, num_experts]``, each head's ``softmax(beta^(k))`` (the same for
        every example)."""
        p = self.expert_distributions()
        batch = tf.shape(inputs["embedded"])[0]
        shape = tf.concat([[batch], tf.shape(p)], axis=0)
        return {"gate_weights/experts": tf.broadcast_to(p[None], shape)}


# A small heterogeneous default, for a derived network written by hand.
DEFAULT_EXPERT_OPS = (("mlp_64", "bit_gate"), ("conv_3", "mlp_32"), ("bit_gate", "conv_5"),
                      ("mlp_128", "skip"))


@keras.utils.register_keras_serializable(package="msmt")
class AutoMTLDerived(_AutoMTLBase):
    """The network AutoMTL derives from a search, retrained from scratch (Alg. 1, l. 10-12).

    embedded -> the chosen interaction operation -> Dense(``expert_dim``) -> the
    ``HeterogeneousExpert``s (``expert_ops[i]``: expert ``i``'s operation per block)
    -> per (scenario, task) head a softmax gate over its ``selected_experts`` only
    (MMoE-style, computed from the expert input) -> tower.

    ``selected_experts``: one list of expert indices per head (heads in
    scenario-major order, ``s * num_tasks + t``), all of the same length ``c``;
    empty means every head uses every expert.

    Inputs: the backbone inputs (see ``models.factory``); reads ``embedded``.
    Output: ``task_logits`` ``[batch, num_scenarios, num_tasks]``.
    """

    def __init__(self, num_scenarios: int, num_tasks: int, interaction_op: str = "cross_2",
                 expert_ops: Sequence[Sequence[str]] = DEFAULT_EXPERT_OPS,
                 selected_experts: Sequence[Sequence[int]] = (), expert_dim: int = 32,
                 tower_units: Sequence[int] = (32,), dropout: float = 0.0, **kwargs):
        super().__init__(num_scenarios, num_tasks, expert_dim, tower_units, dropout, **kwargs)
        self.interaction_op = str(interaction_op)
        self.expert_ops = [[str(op) for op in ops] for ops in expert_ops]
        self.selected_experts = [[int(i) for i in head] for head in selected_experts]
        num_experts = len(self.expert_ops)
        selected = self.selected_experts or [list(range(num_experts))] * self.num_heads
        if len(selected) != self.num_heads:
            raise ValueError(f"selected_experts has {len(selected)} heads, the model "
                             f"{self.num_scenarios} scenarios x {self.num_tasks} tasks")
        if len({len(head) for head in selected}) != 1 or not selected[0]:
            raise ValueError("every head must select the same, non-zero number of experts")
        if any(not 0 <= i < num_experts for head in selected for i in head):
            raise ValueError(f"selected_experts must index the {num_experts} experts")
        self._selected = tf.constant(selected, tf.int32)  # [heads, c]
        self.num_chosen = len(selected[0])
        self.interaction = make_operation(self.interaction_op, name="interaction")
        self.experts = [HeterogeneousExpert(ops, name=f"expert_{i}")
                        for i, ops in enumerate(self.expert_ops)]
        self.gates = SoftmaxGate(self.num_heads, self.num_chosen, name="gates")

    @tf.autograph.experimental.do_not_convert  # No tensor control flow.
    def call(self, inputs, training=None):
        x = self.projection(self.interaction(inputs["embedded"]))  # [B, H]
        expert_outputs = tf.stack([expert(x) for expert in self.experts], axis=1)  # [B, E, H]
        expert_outputs = self._dropout(expert_outputs, training=training)
        chosen = tf.gather(expert_outputs, self._selected, axis=1)  # [B, S*T, c, H]
        gate_weights = self.gates(x)  # [B, S*T, c]
        mixed = tf.einsum("bgc,bgch->bgh", gate_weights, chosen)
        return self._logits(mixed, training)

    def scenario_parameters(self, scenario: int):
        """``(variable, index)`` pairs read only by examples of ``scenario``."""
        c = self.num_chosen
        columns = slice(scenario * self.num_tasks * c, (scenario + 1) * self.num_tasks * c)
        return [(self.gates._dense.kernel, (slice(None), columns)),
                (self.gates._dense.bias, (columns,))] + self._tower_parameters(scenario)

    def get_config(self):
        return {**super().get_config(), "interaction_op": self.interaction_op,
                "expert_ops": self.expert_ops, "selected_experts": self.selected_experts}

    def diagnostics(self, inputs, training=False):
        """Named diagnostic tensors (``models/diagnostics.py``), over all derived experts.

        ``gate_weights/experts`` ``[batch, S * T, num_experts]``: each head's gate, zero
        on the experts the search did not select for it; ``expert_selection/experts``
        (same shape): 1.0 where the head selected the expert.
        """
        x = self.projection(self.interaction(inputs["embedded"]))
        gate_weights = self.gates(x)  # [B, S*T, c]
        selected = tf.one_hot(self._selected, len(self.expert_ops), dtype=gate_weights.dtype)
        weights = tf.einsum("bgc,gce->bge", gate_weights, selected)  # [B, S*T, E]
        selection = tf.reduce_max(selected, axis=1)[None] * tf.ones_like(weights)
        return {"gate_weights/experts": weights, "expert_selection/experts": selection}
