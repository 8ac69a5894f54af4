"""The data the package ships as files, read here and nowhere else: published numbers
(``reference_results.yaml``), the study grids (``studies/NAME.yaml``), the parameters released configs set per
teacher-student pair (``pair_params.yaml``: DKD's beta) and the demo's sizes (``demo.yaml``).
It sits at the bottom of the package (it imports only the YAML reader and the errors), so that the teacher zoo,
the analysis and the studies all read published numbers without importing one another."""

from __future__ import annotations

from functools import cache
from importlib import resources

from mixdistill.errors import ConfigError
from mixdistill.schema import load_yaml

_ROOT = resources.files("mixdistill.resources")


@cache
def _read(name: str):
    return load_yaml(_ROOT.joinpath(name).read_text(encoding="utf-8"))


def reference(name: str) -> dict:
    """The published numbers of one paper or benchmark (a top-level section of reference_results.yaml)."""
    return _read("reference_results.yaml")[name]


def study_config(name: str) -> dict:
    """studies/NAME.yaml: a study's grid and its scales."""
    if not _ROOT.joinpath("studies", f"{name}.yaml").is_file():
        raise ConfigError(f"study config not found: resources/studies/{name}.yaml")
    return _read(f"studies/{name}.yaml")


def pair_params(method: str, teacher: str | None, student: str | None) -> dict:
    """pair_params.yaml: the parameters ``method``'s released configs set for the pair ``teacher-student`` (model
    names), e.g. DKD's beta from mdistiller's CIFAR-100 configs; {} for a pair (or method) not listed."""
    return dict(_read("pair_params.yaml").get(method, {}).get(f"{teacher}-{student}", {}))


def paired_teachers(method: str, student: str) -> list[str]:
    """The teachers pair_params.yaml lists ``student`` with for ``method`` (model names)."""
    return [pair.rsplit("-", 1)[0] for pair in _read("pair_params.yaml").get(method, {})
            if pair.rsplit("-", 1)[1] == student]


def demo_config() -> dict:
    """demo.yaml: the demo's teacher and students."""
    return _read("demo.yaml")
