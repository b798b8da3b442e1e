"""The documentation site builds with warnings as errors and holds what it promises: the guide,
the design notes, the API reference of the three packages, and every notebook with its figures."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.mark.slow
def test_guide_and_design_pages(site):
    guide = (site / "index.html").read_text()
    assert "Two ways to use it" in guide and 'href="design/' in guide
    design = (site / "design" / "index.html").read_text()
    assert "Validity counters" in design and "Error policy" in design


@pytest.mark.slow
@pytest.mark.parametrize("page, names", [
    ("core", ["cofunc.Layer", "cofunc.conv3d", "cofunc.seq", "cofunc.max_pool3d", "cofunc.step_streams"]),
    ("nn", ["cofunc.nn.Conv3d", "cofunc.nn.Sequential", "cofunc.nn.continual", "cofunc.nn.call_mode"]),
    ("models", ["cofunc.models.x3d.x3d", "cofunc.models.st_gcn", "cofunc.models.oadtr.oadtr", "cofunc.models.VideoNet"]),
])
def test_api_reference_documents_public_names(site, page, names):
    html = (site / "api" / page / "index.html").read_text()
    for name in names:
        assert f'id="{name}"' in html, name
    assert "language-pycon" in html or "&gt;&gt;&gt;" in html  # the docstrings' examples are rendered



@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_pages_show_their_figures(site, path):
    html = (site / "notebooks" / path.stem / "index.html").read_text()
    # nbconvert inlines figures as <img ... src="data:image/png;base64,...">; its CSS has other data URLs.
    assert re.search(r'<img [^>]*src="data:image/png;base64,', html)
