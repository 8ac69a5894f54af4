"""pyproject.toml declares what the package imports, and a wheel carries the package's data files."""

from __future__ import annotations

import ast
import fnmatch
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
pytestmark = pytest.mark.checkout  # reads pyproject.toml, constraints.txt and src/

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "mixdistill"
# import name -> distribution name, where they differ
DISTRIBUTION = {"yaml": "pyyaml", "sklearn": "scikit-learn", "PIL": "pillow"}
# imported only where a config asks for them: declared as an extra, never required
OPTIONAL = {"ray": "ray", "wandb": "wandb", "timm": "timm"}
# used through another package's module (torch.utils.tensorboard), so never imported by name
INDIRECT = {"tensorboard"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _name(requirement: str) -> str:
    return _normalize(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1))


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _imported_modules() -> set[str]:
    modules = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"mixdistill", "__future__"}


def test_every_third_party_import_is_declared():
    project = _pyproject()["project"]
    required = {_name(r) for r in project["dependencies"]}
    extras = {extra: {_name(r) for r in reqs} for extra, reqs in project["optional-dependencies"].items()}
    imported = _imported_modules()
    assert {"torch", "numpy", "yaml"} <= imported  # the scan sees the package's imports
    for module in sorted(imported):
        dist = _normalize(DISTRIBUTION.get(module, module))
        if module in OPTIONAL:
            assert dist not in required, f"{module} is optional (imported on demand) but a required dependency"
            assert dist in extras.get(OPTIONAL[module], set()), f"{module}: no [{OPTIONAL[module]}] extra"
        else:
            assert dist in required, f"src/mixdistill imports {module}: declare {dist} in [project] dependencies"
    for dist in INDIRECT:
        assert dist in required
    unused = required - {_normalize(DISTRIBUTION.get(m, m)) for m in imported} - INDIRECT
    assert not unused, f"declared but never imported: {sorted(unused)}"


def test_dependencies_are_ranges_that_hold_the_tested_pins():
    from packaging.requirements import Requirement

    requirements = {_name(r): Requirement(r) for r in _pyproject()["project"]["dependencies"]}
    for name, requirement in requirements.items():
        assert requirement.specifier, f"{name} has no version range"
    pins = [line.split("#")[0].strip() for line in (ROOT / "constraints.txt").read_text().splitlines()]
    pins = [Requirement(pin) for pin in pins if pin]
    assert {"torch", "torchvision"} <= {_normalize(pin.name) for pin in pins}
    for pin in pins:
        (version,) = [spec.version for spec in pin.specifier if spec.operator == "=="]
        range_ = requirements[_normalize(pin.name)].specifier
        assert range_.contains(version), f"constraints.txt pins {pin} outside pyproject's {pin.name}{range_}"


def test_package_data_covers_every_data_file():
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["mixdistill"]
    data = [p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*")
            if p.is_file() and p.suffix not in {".py", ".pyc"} and "__pycache__" not in p.parts]
    assert any(path.startswith("resources/studies/") for path in data) and "resources/demo.yaml" in data

    def covered(path: str) -> bool:  # a pattern matches segment by segment ('*' does not cross a '/')
        parts = path.split("/")
        return any(len(parts) == len(p.split("/")) and all(map(fnmatch.fnmatch, parts, p.split("/")))
                   for p in patterns)

    missing = [path for path in data if not covered(path)]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def test_setup_refuses_in_one_line_when_the_disk_cannot_hold_the_install(tmp_path):
    import subprocess

    venv = tmp_path / "not-yet" / "venv"
    env = {"PATH": "/usr/bin:/bin", "VENV": str(venv), "MIXDISTILL_INSTALL_NEED_MB": str(10**9)}
    done = subprocess.run([str(ROOT / "setup.sh"), "install"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs about 1000000000 MB free" in lines[0] and str(tmp_path) in lines[0]
    assert list(tmp_path.iterdir()) == []  # no half-made venv left behind
