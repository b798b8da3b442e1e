"""The package is typed for its users: a type checker sees the public API's annotations.

`tests/typecheck/client.py` is a user's program; mypy (configured in pyproject.toml) checks it
against the library, and its ``assert_type`` lines fail if a public name's type is lost (``Any``).
The wheel ships ``py.typed``, without which an installed package is read as untyped.
"""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_public_api_type_checks():
    result = _mypy()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


@pytest.mark.slow
def test_type_checker_sees_the_library_types(tmp_path):
    """Misuse of the public API is reported: the types are real, not ``Any``."""
    program = tmp_path / "misuse.py"
    program.write_text(
        "import torch, cofunc, cofunc.nn as cn, cofunc.models\n"
        "net = cofunc.models.x3d(size=3)\n"                                  # size is a str
        "delay: str = cn.Sequential(cn.Conv3d(3, 4, 3)).delay\n"             # delay is an int
        "layer = cofunc.seq(cofunc.conv3d(3, 4, 3))\n"
        "layer.undefined_method()\n"                                          # no such attribute
    )
    result = _mypy(str(program))
    assert result.returncode == 1, result.stdout
    assert 'Argument "size" to "x3d" has incompatible type "int"' in result.stdout, result.stdout
    assert 'expression has type "int", variable has type "str"' in result.stdout, result.stdout
    assert '"Seq" has no attribute "undefined_method"' in result.stdout, result.stdout


@pytest.mark.slow
def test_wheel_ships_py_typed(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(ROOT)], check=True, timeout=600)
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.startswith("cofunc_torch-")
    names = zipfile.ZipFile(wheel).namelist()
    assert "cofunc/py.typed" in names
    assert "cofunc/nn/__init__.py" in names and "cofunc/models/x3d.py" in names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Name: cofunc-torch" in metadata
