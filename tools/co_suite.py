"""Run co 1.2.4's own test suite against `cofunc.nn`, changing only the import lines.

co's tests are part of neither this repository nor co's PyPI package; point this script at a
checkout of co's repository (https://github.com/LukasHedegaard/continual-inference, tag v1.2.4):

    python -m tools.co_suite /path/to/continual-inference [--against co] [--json out.json]

The suite (``tests/continual/``) is copied to a temporary folder, its imports are rewritten
(``import continual as co`` -> ``import cofunc.nn as co``, ``from continual.x import Y`` ->
``from cofunc.nn.x import Y``) and pytest runs it in a subprocess. ``--against co`` runs the
unchanged suite on co itself, for the side-by-side figure. A test module that fails to import
counts each of its tests as failed ("not collected"). `docs/co-compatibility.md` lists the tests
that fail and why.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

_IMPORTS = [
    (re.compile(r"^(\s*)import continual as co\b", re.M), r"\1import cofunc.nn as co"),
    (re.compile(r"^(\s*)import continual\.(\S+) as (\w+)", re.M), r"\1import cofunc.nn.\2 as \3"),
    (re.compile(r"^(\s*)from continual\.(\S+) import ", re.M), r"\1from cofunc.nn.\2 import "),
    (re.compile(r"^(\s*)from continual import ", re.M), r"\1from cofunc.nn import "),
]


def rewrite(source: str) -> str:
    """Change only the import lines that name co's package."""
    for pattern, replacement in _IMPORTS:
        source = pattern.sub(replacement, source)
    return source


def prepare(co_checkout: Path, target: Path, against: str) -> Path:
    suite = co_checkout / "tests" / "continual"
    if not suite.is_dir():
        raise SystemExit(f"co_suite: {suite} does not exist; expected a checkout of co's repository at tag v1.2.4")
    dest = target / "continual_suite"
    shutil.copytree(suite, dest)
    (dest / "__init__.py").touch()
    if against == "cofunc":
        for path in dest.rglob("*.py"):
            path.write_text(rewrite(path.read_text()))
    return dest


def _pytest(dest: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", str(dest), "-p", "no:cacheprovider", "--rootdir", str(dest.parent),
               "-W", "ignore::DeprecationWarning", *args]
    return subprocess.run(command, cwd=dest.parent, capture_output=True, text=True)


def collect_ids(co_checkout: Path) -> list:
    """The test ids of co's unchanged suite (collected against co, which the test extra installs)."""
    with tempfile.TemporaryDirectory(prefix="co-suite-ids-") as tmp:
        dest = prepare(co_checkout, Path(tmp), "co")
        out = _pytest(dest, "-q", "--collect-only").stdout
    return [line.strip() for line in out.splitlines() if "::" in line]


def run(co_checkout: Path, against: str, extra=()) -> dict:
    """``{test id: "passed" | "failed" | "skipped" | "not collected"}`` for co's suite."""
    expected = collect_ids(co_checkout)
    with tempfile.TemporaryDirectory(prefix="co-suite-") as tmp:
        dest = prepare(co_checkout, Path(tmp), against)
        report = Path(tmp) / "report.xml"
        _pytest(dest, "-q", "--continue-on-collection-errors", f"--junitxml={report}", *extra)
        outcomes = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            module, name = case.get("classname", ""), case.get("name", "")
            nodeid = module.replace(".", "/") + ".py::" + name
            if case.find("failure") is not None or case.find("error") is not None:
                outcomes[nodeid] = "failed"
            elif case.find("skipped") is not None:
                outcomes[nodeid] = "skipped"
            else:
                outcomes[nodeid] = "passed"
    # A module that fails to import runs none of its tests (junit reports the module instead).
    return {nodeid: outcomes.get(nodeid, "not collected") for nodeid in expected}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("co_checkout", type=Path, help="a checkout of co's repository (tag v1.2.4)")
    parser.add_argument("--against", choices=("cofunc", "co"), default="cofunc")
    parser.add_argument("--json", type=Path, help="write {test id: outcome} here")
    args, extra = parser.parse_known_args(argv)
    outcomes = run(args.co_checkout.resolve(), args.against, extra)
    for nodeid, outcome in sorted(outcomes.items()):
        print(f"{outcome:14s} {nodeid}")
    passed = sum(1 for outcome in outcomes.values() if outcome == "passed")
    print(f"\nco 1.2.4's suite against {args.against}: {passed} of {len(outcomes)} passed")
    if args.json:
        args.json.write_text(json.dumps(outcomes, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
