"""STAR (Sheng et al., "One Model to Serve All: Star Topology Adaptive Recommender
for Multi-Domain CTR Prediction", CIKM'21), with one output per task.

In the factory's model each example runs only its own scenario's ("domain" in the
paper) path, grouped by scenario (``models.layers.routing``); an example never
produces a gradient on another scenario's parameters. Partitioned normalization's
per-scenario moving statistics are updated from the scenario's own examples only.
"""

from typing import Sequence

import tensorflow as tf
import tf_keras as keras

from models.layers.core import flatten_fields
from models.layers.routing import ScenarioRouting, build_sublayer


def _scenario_one_hot(scenario_id, num_scenarios: int, dtype):
    """``[batch] -> [batch, S]``; an unseen id (``num_scenarios``) is an all-zero row."""
    return tf.one_hot(tf.cast(scenario_id, tf.int32), num_scenarios, dtype=dtype)


@keras.utils.register_keras_serializable(package="msmt")
class PartitionedNormalization(keras.layers.Layer):
    """Batch normalization with shared and per-scenario parameters (STAR, "Partitioned
    Normalization").

    For scenario ``p``::

        z'_p = (gamma * gamma_p) * (z - E_p) / sqrt(Var_p + epsilon) + (beta + beta_p)

    In training ``E_p, Var_p`` are the moments of the batch's examples of
    scenario ``p`` (masked moments, synchronised across replicas, so the result does
    not depend on how a batch is split) and the moving statistics of ``p`` are
    updated from them; a scenario without examples in the batch keeps its moving
    statistics, and uses them. At inference every scenario uses its own moving
    statistics. Examples of an unseen scenario (id ``num_scenarios``) contribute
    to no statistics.

    Inputs: ``z`` ``[batch, d]`` and ``scenario_id`` ``[batch]`` (int, in
    ``[0, num_scenarios]``).
    Output: ``[batch, num_scenarios, d]``, ``z`` normalised as each scenario.

    Args:
        num_scenarios: number of scenarios ``S``.
        momentum: momentum of the moving statistics (as ``BatchNormalization``).
        epsilon: added to the variance.
    """

    def __init__(self, num_scenarios: int, momentum: float = 0.99, epsilon: float = 1e-3,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios = int(num_scenarios)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        d = int(input_shape[-1])
        S = self.num_scenarios
        self.gamma = self.add_weight(name="gamma", shape=(d,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(d,), initializer="zeros")
        self.gamma_p = self.add_weight(name="gamma_p", shape=(S, d), initializer="ones")
        self.beta_p = self.add_weight(name="beta_p", shape=(S, d), initializer="zeros")
        # Each replica updates its own copy from the same synchronised moments.
        statistics = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                          aggregation=tf.VariableAggregation.MEAN)
        self.moving_mean = self.add_weight(name="moving_mean", shape=(S, d),
                                           initializer="zeros", **statistics)
        self.moving_variance = self.add_weight(name="moving_variance", shape=(S, d),
                                               initializer="ones", **statistics)
        super().build(input_shape)

    def _batch_moments(self, z, one_hot):
        """Per-scenario mean and (biased) variance ``[S, d]`` and counts ``[S]``."""
        replica = tf.distribute.get_replica_context()
        sync = replica is not None and replica.num_replicas_in_sync > 1

        def all_sum(*tensors):
            if not sync:
                return tensors
            return replica.all_reduce(tf.distribute.ReduceOp.SUM, list(tensors))

        count, total = all_sum(tf.reduce_sum(one_hot, axis=0),
                               tf.matmul(one_hot, z, transpose_a=True))
        safe_count = tf.maximum(count, 1.0)[:, None]
        mean = total / safe_count
        deviation = z - tf.matmul(one_hot, mean)  # From the example's own scenario mean.
        # Matmuls, not einsum "bs,bd->sd": MklEinsum's gradient was 2x slower here.
        (squares,) = all_sum(tf.matmul(one_hot, tf.square(deviation), transpose_a=True))
        return mean, squares / safe_count, count

    def call(self, z, scenario_id, training=None):
        scale, offset = self.scale_and_offset(z, scenario_id, training)
        return z[:, None, :] * scale + offset

    def scale_and_offset(self, z, scenario_id, training=None):
        """Every scenario's affine map ``[S, d]`` (``z'_p = z * scale_p + offset_p``); in
        training from the batch's moments, updating the moving statistics."""
        if not self.built:
            build_sublayer(self, z.shape)
        z = tf.cast(z, self.dtype)
        training = bool(training) and self.trainable
        if training:
            one_hot = _scenario_one_hot(scenario_id, self.num_scenarios, z.dtype)
            batch_mean, batch_variance, count = self._batch_moments(z, one_hot)
            present = (count > 0)[:, None]
            mean = tf.where(present, batch_mean, self.moving_mean)
            variance = tf.where(present, batch_variance, self.moving_variance)
            decay = 1.0 - self.momentum
            self.moving_mean.assign(self.moving_mean - decay * (
                self.moving_mean - tf.stop_gradient(mean)))
            self.moving_variance.assign(self.moving_variance - decay * (
                self.moving_variance - tf.stop_gradient(variance)))
        else:
            mean, variance = self.moving_mean, self.moving_variance
        scale = (self.gamma * self.gamma_p) * tf.math.rsqrt(variance + self.epsilon)  # [S, d]
        offset = (self.beta + self.beta_p) - mean * scale  # [S, d]
        return scale, offset

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios,
                "momentum": self.momentum, "epsilon": self.epsilon}


@keras.utils.register_keras_serializable(package="msmt")
class StarTopologyDense(keras.layers.Layer):
    """One star-topology fully-connected layer (STAR, "Star Topology FCN").

    Scenario ``p``'s weights combine the shared (centered) ones with its own::

        W*_p = W ⊙ W_p,   b*_p = b + b_p,   out_p = phi(in_p W*_p + b*_p)

    ``W_p`` starts at ones and ``b_p`` at zeros, so every scenario starts from the
    shared layer.

    Input: ``[batch, num_scenarios, d_in]`` (scenario ``p`` reads slice ``p``) or
    ``[batch, d_in]`` (every scenario reads the same input).
    Output: ``[batch, num_scenarios, units]``.

    Args:
        num_scenarios: number of scenarios ``S``.
        units: output width.
        activation: ``phi``.
    """

    def __init__(self, num_scenarios: int, units: int, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios = int(num_scenarios)
        self.units = int(units)
        self.activation = keras.activations.get(activation)

    def build(self, input_shape):
        d_in = int(input_shape[-1])
        S = self.num_scenarios
        self.kernel = self.add_weight(name="kernel", shape=(d_in, self.units),
                                      initializer=keras.initializers.GlorotUniform())
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros")
        self.kernel_p = self.add_weight(name="kernel_p", shape=(S, d_in, self.units),
                                        initializer="ones")
        self.bias_p = self.add_weight(name="bias_p", shape=(S, self.units), initializer="zeros")
        super().build(input_shape)

    def effective_weights(self):
        """``(W*, b*)``: ``[S, d_in, units]`` and ``[S, units]``, every scenario's weights."""
        return self.kernel * self.kernel_p, self.bias + self.bias_p

    def call(self, inputs):
        kernel, bias = self.effective_weights()
        if inputs.shape.rank == 2:
            outputs = tf.einsum("bi,sio->bso", inputs, kernel)
        else:
            outputs = tf.einsum("bsi,sio->bso", inputs, kernel)
        return self.activation(outputs + bias)

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios,
                "units": self.units, "activation": keras.activations.serialize(self.activation)}


@keras.utils.register_keras_serializable(package="msmt")
class ScenarioAuxiliaryNetwork(keras.layers.Layer):
    """STAR's auxiliary network ("Auxiliary Network"): a small MLP fed the scenario indicator.

    For scenario ``p`` it reads ``[e_p, x]`` (``e_p`` the scenario's embedding;
    ``x`` the example's features when ``use_features``, else ``e_p`` alone) and
    returns one logit per task, added to the main network's logits. The first
    layer is split, ``W_e e_p + W_x x``, so ``x`` is multiplied once for all
    scenarios.

    Input: ``x`` ``[batch, d]``.
    Output: ``[batch, num_scenarios, num_tasks]``.

    Args:
        num_scenarios: number of scenarios ``S``.
        num_tasks: number of tasks, the output width.
        embedding_dim: width of the scenario embeddings ``e_p``.
        units: hidden widths (ReLU).
        use_features: whether the network also reads ``x``.
    """

    def __init__(self, num_scenarios: int, num_tasks: int, embedding_dim: int,
                 units: Sequence[int] = (32,), use_features: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios, self.num_tasks = int(num_scenarios), int(num_tasks)
        self.embedding_dim = int(embedding_dim)
        self.units = [int(u) for u in units]
        self.use_features = bool(use_features)
        self._hidden = [keras.layers.Dense(u, activation="relu", name=f"dense_{i}")
                        for i, u in enumerate(self.units[1:], start=1)]
        self._output = keras.layers.Dense(self.num_tasks, name="logits")

    def build(self, input_shape):
        d = int(input_shape[-1])
        first = self.units[0]
        self.scenario_embeddings = self.add_weight(
            name="scenario_embeddings", shape=(self.num_scenarios, self.embedding_dim),
            initializer=keras.initializers.RandomUniform(-0.05, 0.05))
        self.kernel_e = self.add_weight(name="kernel_e", shape=(self.embedding_dim, first),
                                        initializer=keras.initializers.GlorotUniform())
        if self.use_features:
            self.kernel_x = self.add_weight(name="kernel_x", shape=(d, first),
                                            initializer=keras.initializers.GlorotUniform())
        self.bias = self.add_weight(name="bias", shape=(first,), initializer="zeros")
        super().build(input_shape)

    def call(self, x):
        h = tf.matmul(self.scenario_embeddings, self.kernel_e) + self.bias  # [S, u]
        if self.use_features:
            h = tf.matmul(x, self.kernel_x)[:, None, :] + h  # [B, S, u]
        else:
            h = tf.broadcast_to(h, [tf.shape(x)[0], self.num_scenarios, self.units[0]])
        h = tf.nn.relu(h)
        for dense in self._hidden:
            h = dense(h)
        return self._output(h)

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios,
                "num_tasks": self.num_tasks, "embedding_dim": self.embedding_dim,
                "units": self.units, "use_features": self.use_features}


@keras.utils.register_keras_serializable(package="msmt")
class STAR(keras.layers.Layer):
    """Star Topology Adaptive Recommender: PN, a star-topology FCN, an auxiliary network.

    ``z = PN(x)`` per scenario; ``h_p`` the star-topology FCN on ``z_p`` (hidden
    layers ReLU, the last one ``num_tasks`` logits); the auxiliary network's logits
    for scenario ``p`` are added: ``logit_p = h_p + a_p``.

    Inputs: the backbone inputs (see ``models.factory``); reads ``embedded``
    ``[batch, num_fields, embedding_dim]`` and ``scenario_id`` ``[batch]`` (for
    partitioned normalization's training statistics, and the routing).
    Output: ``task_logits`` ``[batch, num_scenarios, num_tasks]``. With
    ``all_scenarios=False`` (the factory's model) an example runs only its own
    scenario's normalisation and FCN ``W*_p`` (every scenario's for an unseen one,
    ``models.layers.routing``) and row ``p`` of an example of a known scenario other
    than ``p`` is 0; by default every scenario is computed for every example.

    Args:
        num_scenarios: number of scenarios ``S``.
        num_tasks: number of tasks ``T``.
        embedding_dim: width of the auxiliary network's scenario embeddings.
        units: hidden widths of the star-topology FCN (a ``T``-unit layer follows).
        dropout: dropout rate after every hidden FCN layer.
        aux_units: hidden widths of the auxiliary network.
        aux_features: whether the auxiliary network reads the features as well as
            the scenario indicator.
    """

    def __init__(self, num_scenarios: int, num_tasks: int, embedding_dim: int,
                 units: Sequence[int] = (128, 64), dropout: float = 0.0,
                 aux_units: Sequence[int] = (32,), aux_features: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.num_scenarios, self.num_tasks = int(num_scenarios), int(num_tasks)
        self.embedding_dim = int(embedding_dim)
        self.units = [int(u) for u in units]
        self.dropout = float(dropout)
        self.aux_units = [int(u) for u in aux_units]
        self.aux_features = bool(aux_features)
        # Statistics in float32 under a mixed policy too (as Keras' BatchNormalization).
        self.partitioned_norm = PartitionedNormalization(self.num_scenarios,
                                                         name="partitioned_norm", dtype="float32")
        self.star_layers = [
            StarTopologyDense(self.num_scenarios, u, activation="relu", name=f"star_dense_{i}")
            for i, u in enumerate(self.units)]
        self.star_layers.append(StarTopologyDense(self.num_scenarios, self.num_tasks,
                                                  name="star_logits"))
        self._dropout = keras.layers.Dropout(self.dropout)
        self.auxiliary = ScenarioAuxiliaryNetwork(
            self.num_scenarios, self.num_tasks, self.embedding_dim, self.aux_units,
            use_features=self.aux_features, name="auxiliary")

    def call(self, inputs, training=None, all_scenarios=True):
        x = flatten_fields(inputs["embedded"])
        scenario_id = inputs["scenario_id"]
        scale, offset = (tf.cast(t, x.dtype) for t in
                         self.partitioned_norm.scale_and_offset(x, scenario_id, training))
        d = x.shape[-1]
        weights = []  # Per layer, per scenario: W*_p [d_in, units], b*_p [units].
        for layer in self.star_layers:
            build_sublayer(layer, [None, d])
            kernel, bias = layer.effective_weights()
            weights.append((tf.unstack(kernel), tf.unstack(bias)))
            d = layer.units
        auxiliary = self.auxiliary(x)  # [B, S, T]
        routing = ScenarioRouting(scenario_id, self.num_scenarios, all_scenarios)
        logits = []
        for p in range(self.num_scenarios):
            h = routing.gather(p, x)
            for i, (layer, (kernels, biases)) in enumerate(zip(self.star_layers, weights)):
                kernel, bias = kernels[p], biases[p]
                if i == 0:  # PN as scenario p, folded into the first layer's weights:
                    # (h * scale + offset) W + b = h (scale ⊙ W) + (offset W + b).
                    bias = bias + tf.linalg.matvec(kernel, offset[p], transpose_a=True)
                    kernel = kernel * scale[p][:, None]
                h = layer.activation(tf.matmul(h, kernel) + bias)
                if self.dropout and i < len(self.star_layers) - 1:
                    h = self._dropout(h, training=training)
            logits.append(h + routing.gather(p, auxiliary[:, p]))  # [n_p, T]
        return routing.scatter(logits)

    def scenario_parameters(self, scenario: int):
        """``(variable, index)`` pairs read only by examples of ``scenario``."""
        p = (slice(scenario, scenario + 1),)
        pairs = [(self.partitioned_norm.gamma_p, p), (self.partitioned_norm.beta_p, p),
                 (self.auxiliary.scenario_embeddings, p)]
        for layer in self.star_layers:
            pairs += [(layer.kernel_p, p), (layer.bias_p, p)]
        return pairs

    def get_config(self):
        return {**super().get_config(), "num_scenarios": self.num_scenarios,
                "num_tasks": self.num_tasks, "embedding_dim": self.embedding_dim,
                "units": self.units, "dropout": self.dropout, "aux_units": self.aux_units,
                "aux_features": self.aux_features}
