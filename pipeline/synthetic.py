"""Synthetic multi-scenario multi-task (MSMT) recommendation data with a planted ground truth.

The generator writes an impression log in which every row belongs to one *scenario*
(column ``domain``, ``s0`` .. ``s{K-1}``) that hangs under one *channel* (column
``channel``, ``ch0`` .. ``ch{C-1}``), and carries two labels: ``click`` and
``conversion`` (= click AND conversion after the click).  Everything that drives the
labels is known, so models can be judged against the best achievable scores and
against the set of fields that truly matter in each scenario.

Output (``generate(output_dir, config)``)
-----------------------------------------
``output_dir/data.csv.gz``
    gzip CSV (header row, ``,`` separator, gzip mtime 0 so equal configs give equal
    bytes) with columns, in order::

        row_id, channel, domain, cat_00 .. cat_11, num_00 .. num_07,
        p_click, p_conversion, click, conversion

    ``cat_*`` are non-negative integer value ids, ``num_*`` floats with 6 significant
    digits, ``p_click``/``p_conversion`` the rows' TRUE probabilities (6 significant
    digits; labels are sampled from exactly the written values), ``click`` and
    ``conversion`` 0/1 labels with ``conversion == 1`` implying ``click == 1``.
``output_dir/ground_truth.json``
    the planted structure (scenario table, field roles, relevant fields per
    scenario x task) and the oracle AUC / log loss of the true probabilities.

Generative model
----------------
Scenarios.  Scenario ``s_k`` belongs to channel ``ch_{k mod C}`` (round robin, so every
channel owns at least one scenario).  Scenario shares follow a long tail,
``share_k ∝ 1 / (k + 1) ** scenario_zipf_exponent`` (``s0`` the largest); if the
smallest share falls below ``min_scenario_share`` the shares are mixed with the
uniform distribution just enough to lift it to that floor.  Row counts are the
shares rounded by largest remainder (every scenario gets at least one row) and
the rows are shuffled.

Features.  All features are drawn independently of each other and of the scenario.

* 12 categorical fields ``cat_00`` .. ``cat_11`` with cardinalities
  ``CATEGORICAL_CARDINALITIES`` and Zipf-like value frequencies
  ``p(v) ∝ 1 / (v + 1) ** value_zipf_exponent`` (value 0 the most frequent).
* 8 numerical fields ``num_00`` .. ``num_07`` with the distributions in
  ``NUMERICAL_DISTRIBUTIONS`` (lognormal, normal, uniform, exponential).  Each has a
  unit-variance latent score ``z``: the standard normal draw for normal/lognormal,
  ``2*sqrt(3)*(u - 1/2)`` for uniform, ``x/scale - 1`` for exponential.

Effects.  For a row in scenario ``s`` and latent task ``t`` in {click, cvr}::

    logit_t = base_logit[s, t] + sum_f coef[f, s, t] * effect[f, t](x_f)
    p_click = sigmoid(logit_click)
    p_cvr   = sigmoid(logit_cvr)            # P(conversion | click)
    p_conversion = p_click * p_cvr          # P(click AND conversion)

``effect[f, t]`` is standardised to mean 0 and variance 1 under the field's own
distribution, so ``coef[f, s, t] ** 2`` is exactly the share of logit variance the
field contributes in scenario ``s``:

* categorical field: one N(0, 1) effect per value id for click; the cvr vector is
  correlated with it (``task_correlation``); both then centred/scaled with the value
  frequencies as weights;
* numerical field: a smooth function of the latent score ``z`` (``tanh``,
  ``threshold`` = steep tanh step, ``bump`` = Gaussian bump, ``u_shape`` = clipped
  square, ``sine``), the same shape for both tasks, centred/scaled exactly by
  quadrature.  Quantile bucketizing into 10-20 buckets captures all of them.

``coef`` depends on the field's *role* (exactly one per field):

``shared``             ``+a_t`` in every scenario, both tasks.
``scenario_specific``  ``+a_t`` in a strict subset of the scenarios (listed in the
                       ground truth), 0 elsewhere; both tasks.
``task_specific``      ``+a`` for one latent task only (click, or cvr - which makes it
                       relevant to ``conversion`` only), every scenario.
``sign_flip``          ``sign[s] * a_t`` with ``sign[s]`` in {+1, -1}, both signs
                       present, same sign for both tasks: the conflicting scenario
                       effect that a shared-bottom model averages away.
``noise``              0 everywhere.

Amplitudes ``a`` are the role's effect knob (``shared_effect``,
``scenario_specific_effect``, ``task_specific_effect``, ``sign_flip_effect``) times
``effect_scale`` times a per-field, per-task jitter in [0.8, 1.25] drawn from the
seed.  The role assignment itself is fixed (``FIELD_ROLES``), independent of the seed:

=========  ======  ====  =================  ===============================
field      card.   dist  role               detail
=========  ======  ====  =================  ===============================
cat_00     1000          shared
cat_01     50            shared
cat_02     300           scenario_specific  odd scenarios (s1, s3, ...)
cat_03     10            sign_flip          + in even channels, - in odd
cat_04     2000          noise
cat_05     20            task_specific      click
cat_06     200           task_specific      cvr (conversion only)
cat_07     5             shared
cat_08     100           sign_flip          + in first ceil(K/2) scenarios
cat_09     500           scenario_specific  first ceil(K/2) scenarios
cat_10     3             noise
cat_11     30            shared
num_00           logn    shared             tanh
num_01           norm    scenario_specific  last K - K//2 scenarios; bump
num_02           unif    sign_flip          + iff k % 3 == 0; sine
num_03           expo    noise
num_04           norm    task_specific      cvr; u_shape
num_05           logn    task_specific      click; threshold
num_06           unif    shared             bump
num_07           expo    shared             tanh
=========  ======  ====  =================  ===============================

With a single channel the channel sign pattern of ``cat_03`` falls back to
``+`` for even and ``-`` for odd scenario indices, so every sign-flip field flips
for any ``K >= 2`` (``s0`` is always ``+`` and ``s1`` always ``-``).

Base rates.  Each channel draws a target CTR in ``[ctr_min, ctr_max]`` and a target
CVR (conversion given click) in ``[cvr_min, cvr_max]``; each scenario jitters its
channel's targets (sd 0.03, clipped to the range).  The base logit corrects for the
spread of the effects with the probit approximation,
``base = logit(target) * sqrt(1 + pi * var_s,t / 8)`` where ``var_s,t`` is the summed
squared coefficients, so empirical rates land close to the targets.

Labels.  ``click ~ Bernoulli(p_click)``; ``conversion = click * Bernoulli(p_conversion /
p_click)`` using the written (rounded) probabilities, so ``P(conversion) =
p_conversion`` exactly.

Randomness.  Model parameters come from ``numpy.random.default_rng([seed, 0])`` and do
not depend on ``rows``; the data from ``default_rng([seed, 1])``.  Same config, same
bytes; different seed, different data.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import math
import numbers
import os
from typing import Dict, List, Tuple

import numpy as np
import pandas as pd

DEFAULT_ROWS = 50_000

TASKS: Tuple[str, ...] = ("click", "conversion")  # label columns / evaluated tasks
LATENT_TASKS: Tuple[str, ...] = ("click", "cvr")  # tasks with their own logit
ROLES: Tuple[str, ...] = ("shared", "scenario_specific", "task_specific", "sign_flip", "noise")

SCENARIO_COLUMN = "domain"
CHANNEL_COLUMN = "channel"
SCENARIO_HIERARCHY: Tuple[str, ...] = (CHANNEL_COLUMN, SCENARIO_COLUMN)
LABEL_COLUMNS: Tuple[str, ...] = ("click", "conversion")
PROBABILITY_COLUMNS: Dict[str, str] = {"click": "p_click", "conversion": "p_conversion"}

CATEGORICAL_FIELDS: Tuple[str, ...] = tuple(f"cat_{i:02d}" for i in range(12))
NUMERICAL_FIELDS: Tuple[str, ...] = tuple(f"num_{i:02d}" for i in range(8))
FEATURE_FIELDS: Tuple[str, ...] = CATEGORICAL_FIELDS + NUMERICAL_FIELDS
COLUMNS: Tuple[str, ...] = (
    ("row_id", CHANNEL_COLUMN, SCENARIO_COLUMN)
    + FEATURE_FIELDS
    + ("p_click", "p_conversion")
    + LABEL_COLUMNS
)

CATEGORICAL_CARDINALITIES: Dict[str, int] = dict(
    zip(CATEGORICAL_FIELDS, (1000, 50, 300, 10, 2000, 20, 200, 5, 100, 500, 3, 30))
)

# name -> (distribution, parameters)
NUMERICAL_DISTRIBUTIONS: Dict[str, Tuple[str, Dict[str, float]]] = {
    "num_00": ("lognormal", {"mu": 3.0, "sigma": 1.0}),
    "num_01": ("normal", {"mean": 0.0, "std": 1.0}),
    "num_02": ("uniform", {"low": 0.0, "high": 100.0}),
    "num_03": ("exponential", {"scale": 5.0}),
    "num_04": ("normal", {"mean": 50.0, "std": 15.0}),
    "num_05": ("lognormal", {"mu": 0.5, "sigma": 0.75}),
    "num_06": ("uniform", {"low": -1.0, "high": 1.0}),
    "num_07": ("exponential", {"scale": 1.0}),
}

NUMERICAL_SHAPES: Dict[str, str] = {
    "num_00": "tanh",
    "num_01": "bump",
    "num_02": "sine",
    "num_03": "none",
    "num_04": "u_shape",
    "num_05": "threshold",
    "num_06": "bump",
    "num_07": "tanh",
}

# name -> (role, detail).  detail: scenario pattern (scenario_specific), sign pattern
# (sign_flip) or latent task (task_specific).
FIELD_ROLES: Dict[str, Tuple[str, str]] = {
    "cat_00": ("shared", ""),
    "cat_01": ("shared", ""),
    "cat_02": ("scenario_specific", "odd"),
    "cat_03": ("sign_flip", "channel"),
    "cat_04": ("noise", ""),
    "cat_05": ("task_specific", "click"),
    "cat_06": ("task_specific", "cvr"),
    "cat_07": ("shared", ""),
    "cat_08": ("sign_flip", "half"),
    "cat_09": ("scenario_specific", "head"),
    "cat_10": ("noise", ""),
    "cat_11": ("shared", ""),
    "num_00": ("shared", ""),
    "num_01": ("scenario_specific", "tail"),
    "num_02": ("sign_flip", "mod3"),
    "num_03": ("noise", ""),
    "num_04": ("task_specific", "cvr"),
    "num_05": ("task_specific", "click"),
    "num_06": ("shared", ""),
    "num_07": ("shared", ""),
}

_GZIP_LEVEL = 1  # fast; level 6 is 6x slower for ~12% smaller files
_SIGNIFICANT_DIGITS = 6
_RATE_JITTER_SD = 0.03
_AMPLITUDE_JITTER = (0.8, 1.25)


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the generator; every field has a default.  See the module docstring."""

    rows: int = DEFAULT_ROWS
    num_scenarios: int = 5
    num_channels: int = 2
    seed: int = 0
    # scenario sizes: share_k ∝ 1/(k+1)**scenario_zipf_exponent, floored at min_scenario_share
    scenario_zipf_exponent: float = 1.1
    min_scenario_share: float = 0.03
    # categorical value frequencies: p(v) ∝ 1/(v+1)**value_zipf_exponent
    value_zipf_exponent: float = 1.1
    # base-rate ranges (CTR over impressions, CVR = conversion given click)
    ctr_min: float = 0.15
    ctr_max: float = 0.35
    cvr_min: float = 0.15
    cvr_max: float = 0.35
    # logit standard deviation contributed by one field of each role (before jitter)
    shared_effect: float = 0.3
    scenario_specific_effect: float = 0.55
    task_specific_effect: float = 0.4
    sign_flip_effect: float = 0.45
    effect_scale: float = 1.0
    # correlation between a categorical field's click and cvr effect vectors
    task_correlation: float = 0.5

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""

        def fail(name: str, requirement: str) -> None:
            raise ValueError(
                f"SyntheticConfig.{name} must be {requirement}, got {getattr(self, name)!r}"
            )

        def check_int(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                fail(name, "an integer")
            if value < minimum:
                fail(name, f">= {minimum}")

        def check_float(name: str, low: float, high: float, low_open: bool = False,
                        high_open: bool = False) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                fail(name, "a number")
            value = float(value)
            if not math.isfinite(value):
                fail(name, "finite")
            too_low = value <= low if low_open else value < low
            too_high = value >= high if high_open else value > high
            if too_low or too_high:
                left = "(" if low_open else "["
                right = ")" if high_open else "]"
                fail(name, f"in {left}{low:g}, {high:g}{right}")
            return value

        check_int("rows", 100)
        check_int("num_scenarios", 2)
        check_int("num_channels", 1)
        if self.num_channels > self.num_scenarios:
            fail("num_channels", f"<= num_scenarios ({self.num_scenarios})")
        check_int("seed", 0)
        check_float("scenario_zipf_exponent", 0.0, 10.0)
        min_share = check_float("min_scenario_share", 0.0, 0.5, high_open=True)
        if self.num_scenarios * min_share > 1.0 + 1e-12:
            fail("num_scenarios",
                 f"<= {int(1.0 / min_share + 1e-9)} when min_scenario_share={min_share:g}")
        if self.rows < self.num_scenarios:
            fail("rows", f">= num_scenarios ({self.num_scenarios})")
        check_float("value_zipf_exponent", 0.0, 10.0)
        for task in ("ctr", "cvr"):
            low = check_float(f"{task}_min", 0.0, 1.0, low_open=True, high_open=True)
            check_float(f"{task}_max", low, 1.0, high_open=True)
        for name in ("shared_effect", "scenario_specific_effect", "task_specific_effect",
                     "sign_flip_effect", "effect_scale"):
            check_float(name, 0.0, 10.0)
        check_float("task_correlation", -1.0, 1.0)


# ----------------------------------------------------------------------------------
# Model (parameters independent of the number of rows)
# ----------------------------------------------------------------------------------


@dataclasses.dataclass
class _Field:
    name: str
    kind: str  # "categorical" | "numerical"
    role: str
    detail: str
    # coef[k, j]: multiplier of the field's standardised effect for scenario k, latent task j
    coef: np.ndarray
    # categorical: (cardinality,) value probabilities and (2, cardinality) effect vectors
    value_probs: np.ndarray = None
    effects: np.ndarray = None
    # numerical: distribution, parameters, shape and (2,) (mean, std) used to standardise
    distribution: str = ""
    params: Dict[str, float] = None
    shape: str = ""
    shape_moments: Tuple[float, float] = (0.0, 1.0)


@dataclasses.dataclass
class _Model:
    config: SyntheticConfig
    scenarios: List[str]
    channels: List[str]
    scenario_channel: np.ndarray  # (K,) channel index of each scenario
    shares: np.ndarray  # (K,) target shares
    target_rates: np.ndarray  # (K, 2) target CTR, CVR
    base_logit: np.ndarray  # (K, 2)
    fields: List[_Field]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


def _round_sig(x: np.ndarray, digits: int = _SIGNIFICANT_DIGITS) -> np.ndarray:
    """Round to ``digits`` significant digits (what ``%.6g`` writes)."""
    x = np.asarray(x, dtype=np.float64)
    out = x.copy()
    mask = np.isfinite(x) & (x != 0.0)
    if mask.any():
        values = x[mask]
        exponent = digits - 1 - np.floor(np.log10(np.abs(values)))
        pos = exponent >= 0
        rounded = np.empty_like(values)
        factor = 10.0 ** exponent[pos]
        rounded[pos] = np.round(values[pos] * factor) / factor
        factor = 10.0 ** (-exponent[~pos])
        rounded[~pos] = np.round(values[~pos] / factor) * factor
        out[mask] = rounded
    return out


def _scenario_shares(config: SyntheticConfig) -> np.ndarray:
    k = np.arange(config.num_scenarios, dtype=np.float64)
    raw = 1.0 / (k + 1.0) ** config.scenario_zipf_exponent
    raw /= raw.sum()
    floor = config.min_scenario_share
    if raw.min() < floor:
        uniform = 1.0 / config.num_scenarios
        # (1 - lam) * raw_min + lam * uniform == floor
        lam = min(1.0, (floor - raw.min()) / (uniform - raw.min()))
        raw = (1.0 - lam) * raw + lam * uniform
    return raw / raw.sum()


def _scenario_counts(rows: int, shares: np.ndarray) -> np.ndarray:
    exact = shares * rows
    counts = np.floor(exact).astype(np.int64)
    remainder = rows - int(counts.sum())
    if remainder > 0:
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:remainder]] += 1
    for k in np.flatnonzero(counts == 0):  # every scenario gets a row
        counts[int(np.argmax(counts))] -= 1
        counts[k] = 1
    return counts


def _scenario_subset(pattern: str, num_scenarios: int) -> np.ndarray:
    k = np.arange(num_scenarios)
    if pattern == "odd":
        mask = k % 2 == 1
    elif pattern == "head":
        mask = k < (num_scenarios + 1) // 2
    elif pattern == "tail":
        mask = k >= num_scenarios // 2
    else:  # pragma: no cover - programming error
        raise AssertionError(pattern)
    return mask


def _sign_pattern(pattern: str, scenario_channel: np.ndarray, num_channels: int) -> np.ndarray:
    k = np.arange(len(scenario_channel))
    if pattern == "channel":
        parity = scenario_channel % 2 if num_channels >= 2 else k % 2
    elif pattern == "half":
        parity = (k >= (len(k) + 1) // 2).astype(np.int64)
    elif pattern == "mod3":
        parity = (k % 3 != 0).astype(np.int64)
    else:  # pragma: no cover - programming error
        raise AssertionError(pattern)
    return np.where(parity == 0, 1.0, -1.0)


def _zipf_probs(cardinality: int, exponent: float) -> np.ndarray:
    p = 1.0 / (np.arange(cardinality, dtype=np.float64) + 1.0) ** exponent
    return p / p.sum()


def _shape(shape: str, z: np.ndarray) -> np.ndarray:
    if shape == "tanh":
        return np.tanh(1.2 * z)
    if shape == "threshold":
        return np.tanh(3.0 * (z - 0.5))
    if shape == "bump":
        return np.exp(-0.5 * ((z - 0.3) / 0.6) ** 2)
    if shape == "u_shape":
        return np.minimum(z * z, 4.0)
    if shape == "sine":
        return np.sin(1.8 * z)
    if shape == "none":
        return np.zeros_like(z)
    raise AssertionError(shape)  # pragma: no cover


def _latent_grid(distribution: str) -> Tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes of the unit-variance latent score and their weights."""
    if distribution in ("normal", "lognormal"):
        z = np.linspace(-9.0, 9.0, 36001)
        w = np.exp(-0.5 * z * z)
    elif distribution == "uniform":
        u = (np.arange(40000) + 0.5) / 40000
        z = 2.0 * math.sqrt(3.0) * (u - 0.5)
        w = np.ones_like(z)
    elif distribution == "exponential":
        t = np.linspace(0.0, 50.0, 100001)
        z = t - 1.0
        w = np.exp(-t)
    else:  # pragma: no cover
        raise AssertionError(distribution)
    return z, w / w.sum()


def _shape_moments(shape: str, distribution: str) -> Tuple[float, float]:
    if shape == "none":
        return 0.0, 1.0
    z, w = _latent_grid(distribution)
    h = _shape(shape, z)
    mean = float(np.sum(w * h))
    std = float(np.sqrt(np.sum(w * (h - mean) ** 2)))
    return mean, std


def _standardise(vector: np.ndarray, probs: np.ndarray) -> np.ndarray:
    centred = vector - np.sum(probs * vector)
    std = math.sqrt(float(np.sum(probs * centred * centred)))
    return centred / std if std > 0 else centred


def _build_model(config: SyntheticConfig) -> _Model:
    rng = np.random.default_rng([config.seed, 0])
    K, C = config.num_scenarios, config.num_channels
    scenarios = [f"s{k}" for k in range(K)]
    channels = [f"ch{c}" for c in range(C)]
    scenario_channel = np.arange(K) % C
    shares = _scenario_shares(config)

    # target base rates: channel level + scenario jitter
    ranges = np.array([[config.ctr_min, config.ctr_max], [config.cvr_min, config.cvr_max]])
    channel_rates = rng.uniform(ranges[:, 0], ranges[:, 1], size=(C, 2))
    jitter = rng.normal(0.0, _RATE_JITTER_SD, size=(K, 2))
    target_rates = np.clip(channel_rates[scenario_channel] + jitter, ranges[:, 0], ranges[:, 1])

    role_effect = {
        "shared": config.shared_effect,
        "scenario_specific": config.scenario_specific_effect,
        "task_specific": config.task_specific_effect,
        "sign_flip": config.sign_flip_effect,
        "noise": 0.0,
    }
    rho = config.task_correlation
    fields: List[_Field] = []
    for name in FEATURE_FIELDS:
        role, detail = FIELD_ROLES[name]
        jit = rng.uniform(*_AMPLITUDE_JITTER, size=2)
        amplitude = role_effect[role] * config.effect_scale * jit  # (2,) click, cvr
        coef = np.zeros((K, 2))
        if role == "shared":
            coef[:, :] = amplitude
        elif role == "scenario_specific":
            coef[_scenario_subset(detail, K), :] = amplitude
        elif role == "task_specific":
            j = LATENT_TASKS.index(detail)
            coef[:, j] = amplitude[j]
        elif role == "sign_flip":
            coef[:, :] = _sign_pattern(detail, scenario_channel, C)[:, None] * amplitude
        if name in CATEGORICAL_CARDINALITIES:
            card = CATEGORICAL_CARDINALITIES[name]
            probs = _zipf_probs(card, config.value_zipf_exponent)
            base = rng.standard_normal((2, card))
            click_vec = _standardise(base[0], probs)
            cvr_vec = _standardise(rho * click_vec + math.sqrt(1.0 - rho * rho) * base[1], probs)
            fields.append(_Field(name, "categorical", role, detail, coef,
                                 value_probs=probs, effects=np.stack([click_vec, cvr_vec])))
        else:
            distribution, params = NUMERICAL_DISTRIBUTIONS[name]
            shape = NUMERICAL_SHAPES[name]
            fields.append(_Field(name, "numerical", role, detail, coef,
                                 distribution=distribution, params=dict(params), shape=shape,
                                 shape_moments=_shape_moments(shape, distribution)))

    variance = np.sum(np.stack([f.coef ** 2 for f in fields]), axis=0)  # (K, 2)
    base_logit = _logit(target_rates) * np.sqrt(1.0 + math.pi * variance / 8.0)
    return _Model(config, scenarios, channels, scenario_channel, shares, target_rates,
                  base_logit, fields)


# ----------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------


def _sample_numerical(field: _Field, rng: np.random.Generator, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Return (written value, unit-variance latent score)."""
    p = field.params
    if field.distribution == "normal":
        z = rng.standard_normal(n)
        x = p["mean"] + p["std"] * z
    elif field.distribution == "lognormal":
        z = rng.standard_normal(n)
        x = np.exp(p["mu"] + p["sigma"] * z)
    elif field.distribution == "uniform":
        u = rng.random(n)
        x = p["low"] + (p["high"] - p["low"]) * u
        z = 2.0 * math.sqrt(3.0) * (u - 0.5)
    elif field.distribution == "exponential":
        t = rng.standard_exponential(n)
        x = p["scale"] * t
        z = t - 1.0
    else:  # pragma: no cover
        raise AssertionError(field.distribution)
    return _round_sig(x), z


def _simulate(model: _Model) -> Tuple[pd.DataFrame, np.ndarray]:
    """Return the data frame and each row's scenario index."""
    config = model.config
    n = config.rows
    rng = np.random.default_rng([config.seed, 1])

    counts = _scenario_counts(n, model.shares)
    scenario_idx = rng.permutation(np.repeat(np.arange(config.num_scenarios), counts))

    logits = model.base_logit[scenario_idx].T.copy()  # (2, n)
    columns: Dict[str, np.ndarray] = {}
    for field in model.fields:
        if field.kind == "categorical":
            cdf = np.cumsum(field.value_probs)
            values = np.searchsorted(cdf, rng.random(n), side="right")
            np.minimum(values, len(cdf) - 1, out=values)
            columns[field.name] = values.astype(np.int64)
            for j in range(2):
                if np.any(field.coef[:, j]):
                    logits[j] += field.coef[scenario_idx, j] * field.effects[j][values]
        else:
            x, z = _sample_numerical(field, rng, n)
            columns[field.name] = x
            if np.any(field.coef):
                mean, std = field.shape_moments
                effect = (_shape(field.shape, z) - mean) / std
                for j in range(2):
                    if np.any(field.coef[:, j]):
                        logits[j] += field.coef[scenario_idx, j] * effect

    p_click = _round_sig(_sigmoid(logits[0]))
    p_conversion = _round_sig(p_click * _sigmoid(logits[1]))
    click = rng.random(n) < p_click
    u = rng.random(n)
    conversion = click & (u * p_click < p_conversion)

    channel_names = np.array(model.channels, dtype=object)
    scenario_names = np.array(model.scenarios, dtype=object)
    data = {
        "row_id": np.arange(n, dtype=np.int64),
        CHANNEL_COLUMN: channel_names[model.scenario_channel[scenario_idx]],
        SCENARIO_COLUMN: scenario_names[scenario_idx],
    }
    data.update((name, columns[name]) for name in FEATURE_FIELDS)
    data["p_click"] = p_click
    data["p_conversion"] = p_conversion
    data["click"] = click.astype(np.int64)
    data["conversion"] = conversion.astype(np.int64)
    return pd.DataFrame(data, columns=list(COLUMNS)), scenario_idx


# ----------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------


def oracle_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Plain ROC AUC of ``probabilities`` for binary ``labels``; nan if only one class."""
    labels = np.asarray(labels).ravel()
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    if labels.shape != probabilities.shape:
        raise ValueError(
            f"labels and probabilities differ in length: {labels.size} vs {probabilities.size}"
        )
    if labels.size == 0 or np.unique(labels).size < 2:
        return float("nan")
    from sklearn.metrics import roc_auc_score  # local: keeps module import light

    return float(roc_auc_score(labels, probabilities))


def _logloss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    if labels.size == 0:
        return float("nan")
    p = np.clip(probabilities, 1e-15, 1.0 - 1e-15)
    y = labels.astype(np.float64)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def _json_float(value: float, digits: int = 6):
    value = float(value)
    return None if not math.isfinite(value) else round(value, digits)


# ----------------------------------------------------------------------------------
# Ground truth
# ----------------------------------------------------------------------------------


def _ground_truth(model: _Model, df: pd.DataFrame, scenario_idx: np.ndarray) -> dict:
    config = model.config
    clicks = df["click"].to_numpy()
    conversions = df["conversion"].to_numpy()
    p_click = df["p_click"].to_numpy()
    p_conversion = df["p_conversion"].to_numpy()
    labels = {"click": clicks, "conversion": conversions}
    probs = {"click": p_click, "conversion": p_conversion}

    scenarios = {}
    oracle_aucs: Dict[str, Dict[str, float]] = {}
    oracle_loglosses: Dict[str, Dict[str, float]] = {}
    for k, name in enumerate(model.scenarios):
        mask = scenario_idx == k
        rows = int(mask.sum())
        n_clicks = int(clicks[mask].sum())
        n_conv = int(conversions[mask].sum())
        scenarios[name] = {
            "channel": model.channels[model.scenario_channel[k]],
            "share": _json_float(rows / config.rows),
            "rows": rows,
            "ctr": _json_float(n_clicks / rows if rows else float("nan")),
            "conversion_rate": _json_float(n_conv / rows if rows else float("nan")),
            "cvr": _json_float(n_conv / n_clicks if n_clicks else float("nan")),
            "mean_p_click": _json_float(p_click[mask].mean() if rows else float("nan")),
            "mean_p_conversion": _json_float(p_conversion[mask].mean() if rows else float("nan")),
            "target_share": _json_float(model.shares[k]),
            "target_ctr": _json_float(model.target_rates[k, 0]),
            "target_cvr": _json_float(model.target_rates[k, 1]),
            "base_logit": {t: _json_float(model.base_logit[k, j]) for j, t in enumerate(LATENT_TASKS)},
        }
        oracle_aucs[name] = {t: _json_float(oracle_auc(labels[t][mask], probs[t][mask])) for t in TASKS}
        oracle_loglosses[name] = {t: _json_float(_logloss(labels[t][mask], probs[t][mask])) for t in TASKS}
    oracle_aucs["overall"] = {t: _json_float(oracle_auc(labels[t], probs[t])) for t in TASKS}
    oracle_loglosses["overall"] = {t: _json_float(_logloss(labels[t], probs[t])) for t in TASKS}

    fields = {}
    relevant: Dict[str, Dict[str, List[str]]] = {
        s: {"click": [], "cvr": [], "conversion": []} for s in model.scenarios
    }
    for field in model.fields:
        active = field.coef != 0.0  # (K, 2)
        effect_tasks = [t for j, t in enumerate(LATENT_TASKS) if active[:, j].any()]
        tasks = (["click", "conversion"] if "click" in effect_tasks
                 else ["conversion"] if "cvr" in effect_tasks else [])
        any_active = active.any(axis=1)
        sign = np.sign(field.coef.sum(axis=1)).astype(int)
        entry = {"kind": field.kind}
        if field.kind == "categorical":
            entry["cardinality"] = int(len(field.value_probs))
            entry["value_distribution"] = f"zipf({config.value_zipf_exponent:g})"
        else:
            entry["distribution"] = field.distribution
            entry["params"] = dict(field.params)
            entry["shape"] = field.shape
        entry.update({
            "role": field.role,
            "scenarios": [s for k, s in enumerate(model.scenarios) if any_active[k]],
            "tasks": tasks,
            "effect_tasks": effect_tasks,
            "sign": {s: int(sign[k]) for k, s in enumerate(model.scenarios)},
            "amplitude": {t: _json_float(np.abs(field.coef[:, j]).max()) for j, t in enumerate(LATENT_TASKS)},
        })
        fields[field.name] = entry
        for k, s in enumerate(model.scenarios):
            for j, t in enumerate(LATENT_TASKS):
                if active[k, j]:
                    relevant[s][t].append(field.name)
            if active[k].any():
                relevant[s]["conversion"].append(field.name)

    logit_variance = {
        s: {t: _json_float(sum(f.coef[k, j] ** 2 for f in model.fields)) for j, t in enumerate(LATENT_TASKS)}
        for k, s in enumerate(model.scenarios)
    }
    return {
        "generator": "pipeline.synthetic",
        "seed": config.seed,
        "rows": config.rows,
        "config": dataclasses.asdict(config),
        "scenario_column": SCENARIO_COLUMN,
        "scenario_hierarchy": list(SCENARIO_HIERARCHY),
        "tasks": list(TASKS),
        "latent_tasks": list(LATENT_TASKS),
        "label_columns": list(LABEL_COLUMNS),
        "probability_columns": dict(PROBABILITY_COLUMNS),
        "categorical_fields": list(CATEGORICAL_FIELDS),
        "numerical_fields": list(NUMERICAL_FIELDS),
        "columns": list(COLUMNS),
        "channels": {c: [s for k, s in enumerate(model.scenarios) if model.scenario_channel[k] == i]
                     for i, c in enumerate(model.channels)},
        "scenarios": scenarios,
        "fields": fields,
        "relevant_fields": relevant,
        "logit_effect_variance": logit_variance,
        "oracle_auc": oracle_aucs,
        "oracle_logloss": oracle_loglosses,
    }


# ----------------------------------------------------------------------------------
# Public entry point
# ----------------------------------------------------------------------------------


def _write_atomic(path: str, write) -> None:
    """Call ``write(binary_handle)`` on a temporary file, then move it to ``path``."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_csv_gzip(df: pd.DataFrame, handle) -> None:
    # Floats are already rounded to 6 significant digits (_round_sig gives the double
    # nearest to the 6-digit decimal), so pandas' shortest round-trip repr writes at
    # most 6 significant digits and is much faster than float_format="%.6g".
    with gzip.GzipFile(filename="data.csv", mode="wb", fileobj=handle, mtime=0,
                       compresslevel=_GZIP_LEVEL) as gz:
        with io.TextIOWrapper(gz, encoding="utf-8", newline="") as text:
            df.to_csv(text, index=False, lineterminator="\n")


def generate(output_dir: str, config: SyntheticConfig = SyntheticConfig()) -> dict:
    """Writes output_dir/data.csv.gz and output_dir/ground_truth.json; returns the ground-truth dict."""
    if not isinstance(config, SyntheticConfig):
        raise TypeError(f"config must be a SyntheticConfig, got {type(config).__name__}")
    config.validate()
    model = _build_model(config)
    df, scenario_idx = _simulate(model)
    truth = _ground_truth(model, df, scenario_idx)

    os.makedirs(output_dir, exist_ok=True)
    _write_atomic(os.path.join(output_dir, "data.csv.gz"), lambda h: _write_csv_gzip(df, h))
    payload = (json.dumps(truth, indent=2, allow_nan=False) + "\n").encode("utf-8")
    _write_atomic(os.path.join(output_dir, "ground_truth.json"), lambda h: h.write(payload))
    return truth
