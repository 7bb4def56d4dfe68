"""What every selection method returns, and the batches every method reads.

A method reads Transform's output as batches of
``(field_ids int64 [B, F], scenario_id int64 [B], labels float32 [B, T])``
(``scenario_id == num_scenarios`` marks a scenario unseen in training; methods
skip those rows). ``BatchesFn`` returns a fresh pass over the data on each call,
so a method that needs several epochs (MultiFS's search) calls it once per epoch.
"""

import dataclasses
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import tensorflow as tf

Batch = Tuple[tf.Tensor, tf.Tensor, tf.Tensor]
BatchesFn = Callable[[], Iterable[Batch]]


@dataclasses.dataclass
class SelectorResult:
    """Scores and masks per (scenario, task) and field; value masks for value-level methods.

    - ``scores``: float ``[S, T, F]``, higher = more important (NaN where a
      scenario had no data).
    - ``mask``: float ``[S, T, F]``, 1 = the (scenario, task) path reads the field.
    - ``value_masks``: ``None``, or one float array per field of shape
      ``[S, vocab_size_f]`` (1 = the value's embedding row is kept in that
      scenario), aligned to Transform's vocabulary ids (OOV and missing ids
      included, as in ``models.data.field_vocab_sizes``).
    - ``params``: every parameter the method used, defaults resolved.
    - ``diagnostics``: anything worth keeping (e.g. task relations), arrays or
      JSON-able values; written beside the selection.
    """

    scores: np.ndarray
    mask: np.ndarray
    params: Dict[str, Any]
    value_masks: Optional[List[np.ndarray]] = None
    diagnostics: Dict[str, Any] = dataclasses.field(default_factory=dict)
