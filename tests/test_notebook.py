"""notebooks/tutorial.ipynb runs from top to bottom (outputs are stripped in git)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import REPO

NOTEBOOK = REPO / "notebooks" / "tutorial.ipynb"


def test_tutorial_is_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_tutorial_runs(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    text = "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )
    assert (tmp_path / "tutorial_results" / "seg" / "cellseg" / "ckpts" / "best.ckpt").is_file()
    found = re.search(r"found (\d+) nuclei, (\d+) are there", text)
    assert found and int(found.group(1)) > 0
    images = sum(
        1 for c in nb.cells for o in getattr(c, "outputs", []) if "image/png" in o.get("data", {})
    )
    assert images >= 4  # images, prediction overlay, PCA-RGB grid, UMAP
    same = float(re.search(r"two samples of one dataset: ([\d.e+-]+)", text).group(1))
    gap = float(re.search(r"small vs large nuclei: +([\d.e+-]+)", text).group(1))
    assert gap > same  # larger nuclei are further away than a second sample of the same images
