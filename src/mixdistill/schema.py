"""The bottom of the config layer: a pydantic base that does not take ``true`` for a number nor an infinite or
NaN float, and a YAML reader that refuses duplicate keys and reads numbers and booleans as YAML 1.2 does.

pydantic's lax mode reads ``true`` as 1 for an int or float field (``optim.epochs=true`` would train one
epoch); every config section and every method's parameters derive from :class:`Schema` to refuse that.
PyYAML follows YAML 1.1, where ``1e-4`` (no dot) is a string, ``017`` is octal 15, ``1:30`` is 90 (base 60) and
``yes``/``no``/``on``/``off`` are booleans; configs and ``key=value`` overrides are read with YAML 1.2's core
schema instead (``1e-4`` a float, ``017`` 17, ``1:30``, ``off`` and ``2024-01-01`` text, ``0o17`` octal), as the
README says.
Merge keys (``<<: *anchor``) work as in PyYAML.
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

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # lr=.inf passed gt=0 and diverged at step 1

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value, info):
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            annotation = cls.model_fields[info.field_name].annotation
            if _is_number(annotation) and not _admits(annotation, bool):
                raise ValueError(f"expected a number, got {str(value).lower()}")
        return value


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads scalars by YAML 1.2's core schema."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # <<: *anchor, whose keys the mapping's own may override
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}'", mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        text = self.construct_scalar(node)
        sign, digits = (-1, text[1:]) if text[:1] == "-" else (1, text.lstrip("+"))
        try:
            return sign * (int(digits[2:], 8) if digits.startswith("0o") else int(digits[2:], 16)
                           if digits.startswith("0x") else int(digits, 10))
        except ValueError:  # an explicit tag on what is no 1.2 integer (!!int 0b1)
            raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not an integer",
                                                    node.start_mark) from None


_BOOL, _INT, _FLOAT, _TIMESTAMP = (f"tag:yaml.org,2002:{kind}" for kind in ("bool", "int", "float", "timestamp"))
_StrictLoader.yaml_implicit_resolvers = {  # YAML 1.1's booleans, ints, floats and dates out; 1.2's core schema in
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL, _INT, _FLOAT, _TIMESTAMP)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_StrictLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_StrictLoader.add_implicit_resolver(_INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                                    list("-+0123456789"))
_StrictLoader.add_implicit_resolver(
    _FLOAT, re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
                       r"|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))
_StrictLoader.add_constructor(_INT, _StrictLoader.construct_yaml_int)


def load_yaml(text: str):
    """Parse YAML text (duplicate keys are errors; ``1e-4`` is a float). Raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
