"""Execute notebooks in place and store their outputs (``make notebooks``).

    python notebooks/execute.py                       # every notebook in notebooks/
    python notebooks/execute.py notebooks/01_*.ipynb  # some of them

Each runs in a fresh kernel from its own folder, as Jupyter would run it, with matplotlib's
inline backend, so the stored outputs hold the figures that a repository page or the
documentation site shows. Cell timings are not recorded (they would change every run).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent


def run(notebook: nbformat.NotebookNode, folder: Path, timeout: int = 1800) -> nbformat.NotebookNode:
    """Execute ``notebook`` (in place) in a fresh kernel whose working directory is ``folder``."""
    os.environ.pop("MPLBACKEND", None)  # a non-interactive backend set outside would hide every figure
    client = nbclient.NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False,
                                     resources={"metadata": {"path": str(folder)}})
    client.execute()
    return notebook


def main(argv: list[str]) -> None:
    paths = [Path(p).resolve() for p in argv] or sorted(HERE.glob("*.ipynb"))
    for path in paths:
        start = time.perf_counter()
        notebook = run(nbformat.read(path, as_version=4), path.parent)
        nbformat.write(notebook, path)
        print(f"{path.name}: executed in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
