"""The bottom of the config layer: a pydantic base that does not take ``true`` for a number, and a YAML
reader that refuses duplicate keys and reads ``1e-4`` as a number.

pydantic's lax mode reads ``true`` as 1 for an int or float field (``optim.epochs=true`` would train one
epoch); every config section and every method's parameters derive from :class:`Schema` to refuse that.
PyYAML follows YAML 1.1, where ``1e-4`` (no dot) is a string; configs and ``key=value`` overrides are read
with YAML 1.2's float syntax so that a learning rate written that way is a number.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, field_validator


def _admits(annotation, kind: type) -> bool:
    """Does a field's annotation accept values of type ``kind`` (looking through unions, Optional,
    Annotated and Literal)?"""
    if annotation is kind or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return any(isinstance(a, kind) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return any(_admits(a, kind) for a in typing.get_args(annotation))
    return False


def _is_number(annotation) -> bool:
    return _admits(annotation, int) or _admits(annotation, float)


class Schema(BaseModel):
    """A config section: unknown keys are errors, and a boolean is not a number."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value, info):
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            annotation = cls.model_fields[info.field_name].annotation
            if _is_number(annotation) and not _admits(annotation, bool):
                raise ValueError(f"expected a number, got {str(value).lower()}")
        return value


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads YAML 1.2 floats (``1e-4``, ``5E3``)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_FLOAT_1_2 = re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$")
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


def load_yaml(text: str):
    """Parse YAML text (duplicate keys are errors; ``1e-4`` is a float). Raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
