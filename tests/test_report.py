"""The run report: the printed table and failures (msmt report) and the HTML page."""

import re

import pytest

from pipeline import cli, review


def test_html_report_is_self_contained_and_holds_the_numbers(blessing_runs, tmp_path):
    from pipeline import report
    (_, _), (config, bad), scenario = blessing_runs
    path = report.write_html(bad, config.run_dir, str(tmp_path / "report.html"))
    page = open(path).read()
    sources = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in page and "<script" not in page
    assert len(sources) >= 3  # AUC bars, feature selection heatmap, training curves.
    for values in bad.metrics.values():
        assert f"{values['auc']:.4f}" in page
    assert "NOT blessed" in page and f"{scenario} / click" in page
    for component in ("FeatureSelector", "MSMTTrainer", "Evaluator", "Pusher"):
        assert component in page


def test_cli_report_prints_the_table_and_the_failures(blessing_runs, tmp_path, capsys):
    (_, _), (config, bad), scenario = blessing_runs
    html = tmp_path / "out" / "r.html"
    assert cli.main(["report", config.run_dir, "--html", str(html)]) == 0
    out = capsys.readouterr().out
    assert "Blessed: NO" in out and f"HTML report: {html}" in out and html.exists()
    assert f"{scenario} / click: AUC" in out and "baseline's" in out
    assert f"{bad.metrics[('overall', 'click')]['auc']:.4f}" in out


def test_review_tables(blessing_runs):
    (_, good), (_, bad), scenario = blessing_runs
    frame = review.metrics_frame(bad)
    assert len(frame) == len(bad.metrics) and frame.iloc[0]["scenario"] == "overall"
    comparison = review.compare_runs(good, bad, names=("good", "bad"))
    row = comparison[(comparison.scenario == scenario) & (comparison.task == "click")].iloc[0]
    assert row.delta == pytest.approx(row.auc_bad - row.auc_good) and row.delta < -0.03
    failures = review.validation_frame(bad)
    assert len(failures) == len(bad.gate_failures) and scenario in set(failures["slice"])
