"""mkdocs hooks: pages taken from where they live in the repository.

The README is the site's first page (its links into ``docs/`` are rewritten to be relative to
the site), and every notebook in ``notebooks/`` becomes a page, rendered with its stored
outputs by mkdocs-jupyter, under "Notebooks" in the navigation. Pages of ``docs/`` that
mkdocs.yml does not list go under "Notes".
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _title(path: Path) -> str:
    words = path.stem.split("_")
    if words[0].isdigit():
        words = words[1:]
    return " ".join(words).capitalize()


def _heading(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem


def _listed(nav) -> set:
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_listed(v) for v in nav.values()))
    return set().union(*(_listed(v) for v in nav)) if nav else set()


def on_config(config):
    nav = config["nav"]
    docs = Path(config["docs_dir"])
    notes = [p for p in sorted(docs.glob("*.md")) if p.name not in _listed(nav)]
    if notes:  # pages added to docs/ without a nav entry of their own
        nav.append({"Notes": [{_heading(p): p.name} for p in notes]})
    nav.append({"Notebooks": [{_title(p): f"notebooks/{p.name}"} for p in NOTEBOOKS]})
    return config


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns .ipynb files into pages
def on_files(files, config):
    files.append(File.generated(config, "index.md", abs_src_path=str(ROOT / "README.md")))
    for path in NOTEBOOKS:
        # A file of the repository (src_dir is its root), not a generated one: mkdocs-jupyter
        # reads notebooks through the source directory.
        files.append(File(f"notebooks/{path.name}", src_dir=str(ROOT), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri == "index.md":
        # The README links to docs/x.md from the repository root; the site serves x.md.
        markdown = re.sub(r"\]\(docs/", "](", markdown)
    return markdown
