"""notebooks/: each runs top to bottom (nbclient) on the tiny config, and is stored small."""

import json
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
MAX_STORED_BYTES = 300_000  # outputs, if any are kept, must stay small


def test_the_notebooks_are_there_and_small():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "interleaved_stacking.ipynb"}
    for path in NOTEBOOKS:
        assert path.stat().st_size < MAX_STORED_BYTES, path.name
        cells = json.loads(path.read_text())["cells"]
        install = "".join(cells[1]["source"])
        assert cells[1]["cell_type"] == "code" and "REPO_URL" in install, "Colab install cell"


@pytest.mark.slow  # each trains tiny demo runs and probes them: 1-3 minutes on 2 cores
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    # The kernel inherits this environment: the local checkout, a tiny run, a scratch workdir.
    monkeypatch.setenv("STACKDISTILL_REPO", str(ROOT))
    monkeypatch.setenv("STACKDISTILL_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("STACKDISTILL_NOTEBOOK_WORKDIR", str(tmp_path / "runs"))
    monkeypatch.setenv("STACKDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()  # raises CellExecutionError naming the cell that failed
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    assert len(images) >= 3, "every figure cell shows its figure"
