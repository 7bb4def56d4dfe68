"""The project's Adam, shared by the Trainer, the Tuner and the AutoMTL search."""

import tf_keras as keras


def adam(learning_rate: float) -> keras.optimizers.legacy.Adam:
    """tf_keras' legacy Adam, the same update as ``keras.optimizers.Adam``.

    It applies each variable's update with one fused kernel (``ResourceApplyAdam``), where
    Keras' Adam runs about ten element-wise ops per variable on the CPU (it compiles its
    update with XLA only on GPUs): MMoE trains 2-4% more examples/s, PLE from none to 7.5%
    more (``benchmarks/train_throughput.py --keras-adam``; benchmarks/RESULTS.md, session 13),
    and the traced graphs stay small.
    """
    return keras.optimizers.legacy.Adam(learning_rate)
