"""Tests for pipeline.synthetic: format, determinism, and that the planted structure is real."""

import dataclasses
import gzip
import json
import math
import os

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency
from sklearn.metrics import roc_auc_score

from pipeline import synthetic

ROWS = 20_000


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    truth = synthetic.generate(str(out), synthetic.SyntheticConfig(rows=ROWS, seed=0))
    df = pd.read_csv(out / "data.csv.gz")
    return out, truth, df


@pytest.fixture(scope="module")
def buckets(generated):
    """Per field, a bucket id per row computed on all rows: categorical fields keep
    their 10 most frequent values and pool the rest (-1); numerical fields deciles."""
    _, _, df = generated
    result = {}
    for field in synthetic.FEATURE_FIELDS:
        x = df[field]
        if field.startswith("cat_"):
            keep = x.value_counts().index[:10].to_numpy()
            values = x.to_numpy()
            result[field] = pd.Series(np.where(np.isin(values, keep), values, -1), index=df.index)
        else:
            result[field] = pd.Series(pd.qcut(x, 10, labels=False), index=df.index)
    return result


def _dependence_pvalue(df, bucket, label):
    """Chi-square test of independence between bucket ids and a 0/1 label in df's rows."""
    table = pd.crosstab(bucket.loc[df.index].to_numpy(), df[label].to_numpy())
    assert table.shape[1] == 2, f"{label} has one class only"
    return chi2_contingency(table.to_numpy())[1]


def _bucket_rates(df, bucket, label):
    """Label rate per bucket (pooled -1 bucket excluded), indexed by bucket id."""
    rates = df[label].groupby(bucket.loc[df.index].to_numpy()).mean()
    return rates.drop(index=-1, errors="ignore").sort_index()


def _scenario_rows(df, scenario):
    return df[df["domain"] == scenario]


def _largest(truth, scenarios):
    return max(scenarios, key=lambda s: truth["scenarios"][s]["rows"])


# ---------------------------------------------------------------------------- format


def test_columns_and_dtypes(generated):
    _, truth, df = generated
    assert list(df.columns) == list(synthetic.COLUMNS)
    assert truth["columns"] == list(synthetic.COLUMNS)
    assert len(df) == ROWS
    np.testing.assert_array_equal(df["row_id"].to_numpy(), np.arange(ROWS))
    assert df["channel"].dtype == object and df["domain"].dtype == object
    assert set(df["domain"]) == {f"s{k}" for k in range(5)}
    assert set(df["channel"]) == {"ch0", "ch1"}
    for field in synthetic.CATEGORICAL_FIELDS:
        assert pd.api.types.is_integer_dtype(df[field]), field
        card = truth["fields"][field]["cardinality"]
        assert df[field].min() >= 0 and df[field].max() < card
    for field in synthetic.NUMERICAL_FIELDS:
        assert pd.api.types.is_float_dtype(df[field]), field
    for column in ("p_click", "p_conversion"):
        assert pd.api.types.is_float_dtype(df[column])
        assert ((df[column] > 0) & (df[column] < 1)).all()
    for column in ("click", "conversion"):
        assert pd.api.types.is_integer_dtype(df[column])
        assert set(df[column].unique()) <= {0, 1}


def test_cardinalities_and_zipf_values(generated):
    _, truth, df = generated
    cards = sorted(truth["fields"][f]["cardinality"] for f in synthetic.CATEGORICAL_FIELDS)
    assert cards == sorted([2000, 1000, 500, 300, 200, 100, 50, 30, 20, 10, 5, 3])
    counts = df["cat_04"].value_counts()
    assert counts.index[0] == 0  # value 0 is the most frequent
    assert counts.iloc[0] > 10 * counts.iloc[50]  # long tail
    # distinct numerical distributions: skewed lognormal/exponential, bounded uniform
    assert df["num_00"].mean() > 1.3 * df["num_00"].median()
    assert df["num_02"].between(0, 100).all()


def test_floats_have_at_most_six_significant_digits(generated):
    out, _, _ = generated
    with gzip.open(out / "data.csv.gz", "rt") as handle:
        header = handle.readline().rstrip("\n").split(",")
        lines = [handle.readline().rstrip("\n").split(",") for _ in range(300)]
    float_columns = [header.index(c) for c in synthetic.NUMERICAL_FIELDS + ("p_click", "p_conversion")]
    for line in lines:
        for i in float_columns:
            mantissa = line[i].lower().split("e")[0].lstrip("-").replace(".", "").lstrip("0")
            mantissa = mantissa.rstrip("0") if "." in line[i] else mantissa
            assert len(mantissa) <= 6, line[i]


# ---------------------------------------------------------------------- determinism


def test_deterministic_by_seed(tmp_path):
    config = synthetic.SyntheticConfig(rows=2000, seed=7)
    a = synthetic.generate(str(tmp_path / "a"), config)
    b = synthetic.generate(str(tmp_path / "b" / "nested"), config)  # creates missing dirs
    c = synthetic.generate(str(tmp_path / "c"), dataclasses.replace(config, seed=8))
    read = lambda d, name: (tmp_path / d / name).read_bytes()
    assert read("a", "data.csv.gz") == read("b/nested", "data.csv.gz")
    assert read("a", "ground_truth.json") == read("b/nested", "ground_truth.json")
    assert a == b
    assert read("a", "data.csv.gz") != read("c", "data.csv.gz")
    assert a["oracle_auc"] != c["oracle_auc"]
    # returned dict is what was written
    assert json.loads(read("a", "ground_truth.json")) == a
    # overwriting an existing output is fine and gives the same bytes
    synthetic.generate(str(tmp_path / "a"), config)
    assert read("a", "data.csv.gz") == read("b/nested", "data.csv.gz")


# ------------------------------------------------------------------------ scenarios


def test_scenarios_long_tailed_with_channel_hierarchy(generated):
    _, truth, df = generated
    assert truth["scenario_column"] == "domain"
    assert truth["scenario_hierarchy"] == ["channel", "domain"]
    assert truth["tasks"] == ["click", "conversion"]
    counts = df["domain"].value_counts()
    shares = np.array([counts[f"s{k}"] for k in range(5)]) / ROWS
    assert np.all(np.diff(shares) < 0)  # s0 largest, strictly decreasing
    assert shares.min() >= 0.03
    assert shares.max() / shares.min() > 3
    # each scenario in exactly one channel, each channel owns a scenario
    pairs = df.groupby("domain")["channel"].nunique()
    assert (pairs == 1).all()
    mapping = df.groupby("domain")["channel"].first().to_dict()
    assert set(mapping.values()) == {"ch0", "ch1"}
    for s, entry in truth["scenarios"].items():
        assert entry["channel"] == mapping[s]
        assert entry["rows"] == counts[s]
        assert entry["share"] == pytest.approx(counts[s] / ROWS, abs=1e-6)
    assert sum(e["rows"] for e in truth["scenarios"].values()) == ROWS


def test_many_scenarios_get_minimum_share(tmp_path):
    config = synthetic.SyntheticConfig(rows=3000, num_scenarios=30, num_channels=4, seed=3)
    truth = synthetic.generate(str(tmp_path), config)
    rows = [truth["scenarios"][f"s{k}"]["rows"] for k in range(30)]
    assert min(rows) >= 0.03 * 3000 - 1
    assert rows[0] == max(rows) and rows[0] > 2 * rows[-1]
    channels = {e["channel"] for e in truth["scenarios"].values()}
    assert channels == {"ch0", "ch1", "ch2", "ch3"}


def test_two_scenarios_one_channel_still_has_structure(tmp_path):
    truth = synthetic.generate(
        str(tmp_path), synthetic.SyntheticConfig(rows=500, num_scenarios=2, num_channels=1)
    )
    assert {e["channel"] for e in truth["scenarios"].values()} == {"ch0"}
    for name, entry in truth["fields"].items():
        if entry["role"] == "sign_flip":
            assert set(entry["sign"].values()) == {1, -1}, name
        if entry["role"] == "scenario_specific":
            assert 0 < len(entry["scenarios"]) < 2, name


# --------------------------------------------------------------------------- labels


def test_conversion_implies_click(generated):
    _, _, df = generated
    assert not ((df["conversion"] == 1) & (df["click"] == 0)).any()
    assert (df["p_conversion"] <= df["p_click"]).all()
    assert df["conversion"].sum() > 0


def test_label_rates_match_true_probabilities(generated):
    _, truth, df = generated
    for s, group in df.groupby("domain"):
        for label, prob in (("click", "p_click"), ("conversion", "p_conversion")):
            p = group[prob].to_numpy()
            sd = math.sqrt(np.sum(p * (1 - p))) / len(p)
            assert abs(group[label].mean() - p.mean()) < 4 * sd, (s, label)
        entry = truth["scenarios"][s]
        assert 0.12 <= entry["ctr"] <= 0.38, (s, entry["ctr"])
        assert 0.02 <= entry["conversion_rate"] <= 0.12, (s, entry["conversion_rate"])
        assert 0.12 <= entry["cvr"] <= 0.4, (s, entry["cvr"])
        assert entry["ctr"] == pytest.approx(group["click"].mean(), abs=1e-6)


# --------------------------------------------------------------------- ground truth


def test_ground_truth_roles_are_consistent(generated):
    _, truth, _ = generated
    assert truth["generator"] == "pipeline.synthetic"
    assert truth["seed"] == 0 and truth["rows"] == ROWS
    assert truth["config"] == dataclasses.asdict(synthetic.SyntheticConfig(rows=ROWS))
    fields = truth["fields"]
    assert list(fields) == list(synthetic.FEATURE_FIELDS)
    scenarios = list(truth["scenarios"])
    by_role = {}
    for name, entry in fields.items():
        assert entry["role"] in synthetic.ROLES, name
        by_role.setdefault(entry["role"], []).append(name)
        assert entry["kind"] == ("categorical" if name.startswith("cat_") else "numerical")
        role = entry["role"]
        if role == "noise":
            assert entry["scenarios"] == [] and entry["tasks"] == []
            assert set(entry["sign"].values()) == {0}
        elif role in ("shared", "task_specific", "sign_flip"):
            assert entry["scenarios"] == scenarios, name
        if role == "scenario_specific":
            assert 0 < len(entry["scenarios"]) < len(scenarios), name
            assert entry["tasks"] == ["click", "conversion"]
        if role == "sign_flip":
            assert set(entry["sign"].values()) == {1, -1}, name
            assert entry["tasks"] == ["click", "conversion"]
        if role == "task_specific":
            assert entry["effect_tasks"] in (["click"], ["cvr"]), name
            expected = ["click", "conversion"] if entry["effect_tasks"] == ["click"] else ["conversion"]
            assert entry["tasks"] == expected, name
        if role == "shared":
            assert entry["tasks"] == ["click", "conversion"]
    assert len(by_role["noise"]) >= 2
    assert len(by_role["sign_flip"]) >= 2
    assert len(by_role["scenario_specific"]) >= 2
    task_fields = by_role["task_specific"]
    assert {fields[f]["effect_tasks"][0] for f in task_fields} == {"click", "cvr"}
    for role in synthetic.ROLES:  # every role for both kinds of field
        assert {fields[f]["kind"] for f in by_role[role]} == {"categorical", "numerical"}, role

    for s in scenarios:
        rel = truth["relevant_fields"][s]
        assert set(rel["conversion"]) == set(rel["click"]) | set(rel["cvr"])
        for task in ("click", "cvr", "conversion"):
            assert not set(rel[task]) & set(by_role["noise"])
        for name, entry in fields.items():
            assert (name in rel["conversion"]) == (s in entry["scenarios"])
            assert (name in rel["click"]) == (s in entry["scenarios"] and "click" in entry["tasks"])


# ------------------------------------------------------------ planted structure


def _fields_with_role(truth, role):
    return [f for f, e in truth["fields"].items() if e["role"] == role]


def test_scenario_specific_fields_matter_only_where_planted(generated, buckets):
    _, truth, df = generated
    for field in _fields_with_role(truth, "scenario_specific"):
        active = truth["fields"][field]["scenarios"]
        inactive = [s for s in truth["scenarios"] if s not in active]
        on = _scenario_rows(df, _largest(truth, active))
        off = _scenario_rows(df, _largest(truth, inactive))
        assert _dependence_pvalue(on, buckets[field], "click") < 1e-6, field
        assert _dependence_pvalue(off, buckets[field], "click") > 1e-3, field


def test_sign_flip_fields_have_opposite_effects(generated, buckets):
    _, truth, df = generated

    def rate_correlation(field, s_a, s_b):
        a = _bucket_rates(_scenario_rows(df, s_a), buckets[field], "click")
        b = _bucket_rates(_scenario_rows(df, s_b), buckets[field], "click")
        assert list(a.index) == list(b.index) and len(a) >= 3
        return np.corrcoef(a.to_numpy(), b.to_numpy())[0, 1]

    for field in _fields_with_role(truth, "sign_flip"):
        sign = truth["fields"][field]["sign"]
        plus = _largest(truth, [s for s, v in sign.items() if v == 1])
        minus = _largest(truth, [s for s, v in sign.items() if v == -1])
        corr = rate_correlation(field, plus, minus)
        assert corr < -0.5, (field, corr)
    # contrast: shared fields' effects agree across scenarios (fields whose buckets all
    # hold many rows, so the per-bucket rates are precise)
    well_filled = [f for f in _fields_with_role(truth, "shared")
                   if truth["fields"][f].get("cardinality", 0) <= 10]
    assert {truth["fields"][f]["kind"] for f in well_filled} == {"categorical", "numerical"}
    for field in well_filled:
        corr = rate_correlation(field, "s0", "s1")
        assert corr > 0.5, (field, corr)


def test_noise_fields_show_no_dependence(generated, buckets):
    _, truth, df = generated
    for field in _fields_with_role(truth, "noise"):
        assert _dependence_pvalue(df, buckets[field], "click") > 1e-3, field
        assert _dependence_pvalue(df, buckets[field], "conversion") > 1e-3, field
    # while a shared field is strongly dependent
    shared = _fields_with_role(truth, "shared")[0]
    assert _dependence_pvalue(df, buckets[shared], "click") < 1e-10


def test_task_specific_fields_matter_for_their_task_only(generated, buckets):
    _, truth, df = generated
    clicked = df[df["click"] == 1]
    for field in _fields_with_role(truth, "task_specific"):
        if truth["fields"][field]["effect_tasks"] == ["click"]:
            assert _dependence_pvalue(df, buckets[field], "click") < 1e-6, field
            assert _dependence_pvalue(clicked, buckets[field], "conversion") > 1e-3, field
        else:
            assert _dependence_pvalue(df, buckets[field], "click") > 1e-3, field
            assert _dependence_pvalue(clicked, buckets[field], "conversion") < 1e-6, field


# -------------------------------------------------------------------------- oracle


def test_oracle_metrics_match_recomputation(generated):
    _, truth, df = generated
    groups = dict(list(df.groupby("domain")) + [("overall", df)])
    assert set(truth["oracle_auc"]) == set(groups)
    for name, group in groups.items():
        for task, prob in (("click", "p_click"), ("conversion", "p_conversion")):
            auc = truth["oracle_auc"][name][task]
            assert 0.65 < auc < 0.95, (name, task, auc)
            assert auc == pytest.approx(roc_auc_score(group[task], group[prob]), abs=2e-6)
            p = np.clip(group[prob].to_numpy(), 1e-15, 1 - 1e-15)
            y = group[task].to_numpy()
            logloss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
            assert truth["oracle_logloss"][name][task] == pytest.approx(logloss, abs=2e-6)


def test_oracle_auc_function():
    assert synthetic.oracle_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert math.isnan(synthetic.oracle_auc(np.ones(5), np.linspace(0, 1, 5)))
    assert math.isnan(synthetic.oracle_auc(np.array([]), np.array([])))
    with pytest.raises(ValueError):
        synthetic.oracle_auc(np.array([0, 1]), np.array([0.5]))


# -------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "field, value",
    [
        ("rows", 5),
        ("rows", 1000.5),
        ("num_scenarios", 1),
        ("num_channels", 0),
        ("num_channels", 6),
        ("seed", -1),
        ("num_scenarios", 40),  # 40 * min_scenario_share(0.03) > 1
        ("min_scenario_share", 0.6),
        ("scenario_zipf_exponent", -0.5),
        ("value_zipf_exponent", float("nan")),
        ("ctr_min", 0.0),
        ("ctr_max", 0.1),  # below ctr_min
        ("cvr_max", 1.0),
        ("shared_effect", -1.0),
        ("effect_scale", float("inf")),
        ("task_correlation", 2.0),
    ],
)
def test_bad_config_raises_value_error_naming_field(tmp_path, field, value):
    config = dataclasses.replace(synthetic.SyntheticConfig(), **{field: value})
    with pytest.raises(ValueError, match=rf"SyntheticConfig\.{field}\b"):
        config.validate()
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=field):
        synthetic.generate(str(out), config)
    assert not os.path.exists(out)


def test_default_config_is_valid():
    config = synthetic.SyntheticConfig()
    config.validate()
    assert config.rows == synthetic.DEFAULT_ROWS == 50_000
    assert (config.num_scenarios, config.num_channels, config.seed) == (5, 2, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rows = 10
