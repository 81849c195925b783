"""Execute docs/notebook.ipynb top to bottom and store it with its outputs, as the site and GitHub show it.

    .venv/bin/python scripts/run_notebook.py        # about a minute on 2 CPU cores

The notebook is stored executed rather than run at build time: `mkdocs build` stays seconds long and needs no
torch or kernel, and GitHub shows the plots too. tests/test_notebook.py runs it again and compares the kinds of
output each cell gives with the stored ones. The kernel is this Python with this checkout first on its path
(whatever kernels the machine's Jupyter knows), and the runs go to a temporary folder.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "docs" / "notebook.ipynb"


def execute(path: Path, work: Path):
    """The notebook at ``path`` executed in a kernel of this interpreter, its runs and TMPDIR under ``work``."""
    import nbclient
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = work / "kernels" / "cnnctl"
    spec.mkdir(parents=True)
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "cnnctl", "language": "python",
        "env": {"PYTHONPATH": pythonpath, "TMPDIR": str(work),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
    }))
    km = KernelManager(kernel_name="cnnctl", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec.parent)]))
    nb = nbformat.read(path, as_version=4)
    cwd = work / "cwd"
    cwd.mkdir()
    nbclient.NotebookClient(nb, km=km, timeout=600, resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def without_progress(nb):
    """``nb`` without its stderr streams: the progress bars' hundreds of redraws (and tqdm's note that ipywidgets
    is missing) are a live display, noise once stored; results are printed on stdout or drawn."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
    nb.metadata.pop("widgets", None)  # widget state belongs to one session
    return nb


def main() -> int:
    import nbformat

    with tempfile.TemporaryDirectory(prefix="cnnctl-notebook-run-") as work:
        nb = execute(NOTEBOOK, Path(work))
    nbformat.write(without_progress(nb), NOTEBOOK)
    print(f"stored {NOTEBOOK.relative_to(ROOT)} with its outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
