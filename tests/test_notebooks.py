"""The review notebook executes headless against the good and degraded runs of one pipeline."""

import os

from pipeline.specs import REPO_DIR


def test_review_notebook_executes_against_two_runs(blessing_runs, monkeypatch):
    import nbclient
    import nbformat
    (_, good), (config, bad), scenario = blessing_runs
    monkeypatch.setenv("MSMT_RUN_DIR", config.run_dir)
    monkeypatch.delenv("MSMT_COMPARE_RUN_DIR", raising=False)
    notebook = nbformat.read(os.path.join(REPO_DIR, "notebooks", "review_run.ipynb"), 4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": REPO_DIR}}).execute()
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert f"run: {bad.run_id} | compared with: {good.run_id}" in text
    assert "Blessed: NO" in text and "other run blessed: True | this run blessed: False" in text
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "auc_diff" in html and scenario in html  # TFMA slice table, comparison table.
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # AUC, calibration, AUC change, selection heatmap, curves, comparison.
