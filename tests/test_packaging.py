"""Packaging tells the truth: every imported package declared, every declared one imported,
and ``import distrib`` stays light (no plotting library until a figure is drawn)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: Distribution name -> the module it is imported as, where they differ.
IMPORT_NAMES = {"scikit-learn": "sklearn", "dask-ml": "dask_ml"}


#: Extras whose packages distrib imports only where asked for (``distrib bench --peers``).
OPTIONAL_EXTRAS = ("spark",)


def _declared(extras: tuple[str, ...] = ()) -> set[str]:
    """The installed distrib's dependencies (its metadata, from pyproject.toml): the
    runtime ones, or those of ``extras``."""
    wanted = [
        r
        for r in requires("distrib") or []
        if ("extra ==" not in r and not extras)
        or any(f'extra == "{extra}"' in r for extra in extras)
    ]
    names = {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0] for r in wanted}
    return {IMPORT_NAMES.get(name, name).replace("-", "_") for name in names}


def _imported(folder: Path) -> set[str]:
    found: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names and name != "distrib"}


def test_every_imported_package_is_declared_and_every_declared_one_imported() -> None:
    declared, imported = _declared(), _imported(REPO / "distrib")
    optional = _declared(OPTIONAL_EXTRAS)
    assert optional == {"pyspark"}, optional
    missing = sorted(imported - declared - optional)
    assert not missing, f"imported but not declared: {missing}"
    assert declared <= imported, f"declared but never imported: {sorted(declared - imported)}"


def test_import_distrib_does_not_load_matplotlib() -> None:
    code = "import sys, distrib; print('matplotlib' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False"


def test_import_distrib_is_light_and_its_names_load_on_use() -> None:
    """``import distrib`` (and ``distrib --help``) load neither scikit-learn nor Dask arrays;
    the estimator and the training job load when first named."""
    code = (
        "import sys, distrib\n"
        "print(any(m in sys.modules for m in ('sklearn', 'dask.array', 'matplotlib')))\n"
        "from distrib import DaskLogisticRegression, train\n"
        "print(DaskLogisticRegression.__module__, train.__module__, 'sklearn' in sys.modules)\n"
        "import distrib.cli\n"
        "print('dask.array' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split("\n")[:2] == ["False", "distrib.estimator distrib.run.train True"]
    code = "import sys, distrib.cli; print('sklearn' in sys.modules or 'dask.array' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False", "the CLI's parser loads no heavy library"
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        import distrib

        _ = distrib.nothing  # type: ignore[attr-defined]
