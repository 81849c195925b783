"""docs/notebook.ipynb, stored executed (the site and GitHub show its plots; scripts/run_notebook.py stores it), runs
top to bottom in a real Jupyter kernel (nbclient) against this checkout: train, curves, two optimizers, evaluate,
predict, visualize, a ConfigError; the fresh run gives the stored kinds of output, cell by cell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "docs" / "notebook.ipynb"


def output_kinds(cells) -> list[list[str]]:
    """Per code cell, the kind of each output: ``stream:stdout``, ``image/png``, ... (stderr left out: progress)."""
    kinds = []
    for cell in (c for c in cells if c["cell_type"] == "code"):
        cell_kinds: list[str] = []
        for o in cell["outputs"]:
            if o.get("name") == "stderr":
                continue
            kind = f"stream:{o['name']}" if o["output_type"] == "stream" else "+".join(sorted(o.get("data", {})))
            # the kernel cuts one cell's stdout into one or several stream outputs by timing: count it once
            if not (kind.startswith("stream:") and cell_kinds and cell_kinds[-1] == kind):
                cell_kinds.append(kind)
        kinds.append(cell_kinds)
    return kinds


def test_notebook_is_stored_executed_in_order():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and [c["execution_count"] for c in code] == list(range(1, len(code) + 1))
    assert all(c["outputs"] for c in code)  # every cell shows something
    assert not any(o.get("name") == "stderr" for c in code for o in c["outputs"])  # no stored progress bars
    assert sum("image/png" in o.get("data", {}) for c in code for o in c["outputs"]) >= 3


@pytest.mark.slow
def test_notebook_executes(tmp_path):
    pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from scripts.run_notebook import execute

    # The kernel that stores the notebook: this interpreter with this checkout first on the path, whatever kernels
    # the machine's Jupyter knows; the runs go to tmp_path (its TMPDIR).
    nb = execute(NOTEBOOK, tmp_path)

    def text(cell) -> str:
        return "".join(o.get("text", "") for o in cell.outputs if o["output_type"] == "stream" and o["name"] == "stdout")

    outputs = [c for c in nb.cells if c.cell_type == "code"]
    assert outputs[0].outputs and text(outputs[0]).strip() == __import__("cnnctl").__version__
    assert "best val_acc" in text(outputs[1]) and "lenet5 on digits" in text(outputs[1])
    images = sum("image/png" in o.get("data", {}) for c in outputs for o in c.outputs)
    assert images >= 3  # the curves, the optimizer comparison, the filters
    assert "ensemble" in text(outputs[4]) and "true class" in text(outputs[5])
    assert "optimizer.name" in text(outputs[-1]) and "adam" in text(outputs[-1])
    assert any(Path(tmp_path).glob("cnnctl-notebook-*/sgd/best.pt"))  # the runs went where the notebook said
    stored = json.loads(NOTEBOOK.read_text(encoding="utf-8"))["cells"]
    assert output_kinds(nb.cells) == output_kinds(stored)  # the stored outputs are what this code gives
