"""The notebooks run to the end, print no failed check, and show their figures: executed here,
and as committed (``make notebooks`` stores the outputs, so a repository page shows them)."""

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
_spec = importlib.util.spec_from_file_location("execute_notebooks", NOTEBOOK_DIR / "execute.py")
execute_notebooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute_notebooks)


def _code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _figure_cells(notebook):
    return [cell for cell in _code_cells(notebook) if "plt.show()" in cell.source]


def _images(cell):
    return [out for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]


def _errors(notebook):
    return [out for cell in _code_cells(notebook) for out in cell.get("outputs", []) if out.get("output_type") == "error"]


def _check_outputs(notebook):
    assert not _errors(notebook)
    figures = _figure_cells(notebook)
    assert figures, "every notebook shows at least one figure"
    for cell in figures:
        assert len(_images(cell)) >= cell.source.count("plt.show()"), cell.source[:200]
    # Every notebook prints its checks as "what was checked: True"; none may report a mismatch
    # (reprs such as "compiled=False" are not checks).
    text = "".join(out.get("text", "") for cell in _code_cells(notebook) for out in cell.get("outputs", [])
                   if out.get("name") == "stdout")
    failed = [line for line in text.splitlines() if re.search(r":\s+False\b", line)]
    assert not failed, failed


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_shows_its_outputs(path):
    """The file as committed was executed to the end (run `make notebooks` after editing one)."""
    notebook = nbformat.read(path, as_version=4)
    assert all(cell.get("execution_count") is not None for cell in _code_cells(notebook)), \
        f"{path.name} has cells that were never executed: run `make notebooks`"
    _check_outputs(notebook)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")  # set outside, it must not hide the figures
    notebook = nbformat.read(path, as_version=4)
    for cell in _code_cells(notebook):
        cell.outputs, cell.execution_count = [], None
    _check_outputs(execute_notebooks.run(notebook, path.parent))
