"""AutoGraph leaves tf_keras' own code unconverted, as it leaves Keras 2's.

AutoGraph's conversion rules skip the ``keras`` package, whose code is graph-ready as written,
but not ``tf_keras``, the same Keras 2 code under the name TF 2.16 gives it. Converting it
took about 13 s of each process's first model build and train-step trace (MMoE: 5.4 s -> 0.8 s
to build, 8.8 s -> 0.7 s for the first step; benchmarks/startup_time.py). Our own layers are
still converted. ``models.layers`` calls this on import, so it holds wherever our layers run.
"""

# AutoGraph's rules have no public API; TF is pinned (requirements/), and
# tests/test_models.py checks the rule is in force.
from tensorflow.python.autograph.core import config as _autograph_config

KERAS_PACKAGE = "tf_keras"


def is_tf_keras_rule(rule) -> bool:
    """Whether ``rule`` (one of AutoGraph's conversion rules) leaves tf_keras unconverted."""
    return isinstance(rule, _autograph_config.DoNotConvert) and rule.matches(KERAS_PACKAGE)


def leave_tf_keras_unconverted() -> None:
    """Add ``DoNotConvert("tf_keras")`` to AutoGraph's rules (once)."""
    rules = _autograph_config.CONVERSION_RULES
    if any(is_tf_keras_rule(r) for r in rules):
        return
    _autograph_config.CONVERSION_RULES = (
        _autograph_config.DoNotConvert(KERAS_PACKAGE),) + tuple(rules)
