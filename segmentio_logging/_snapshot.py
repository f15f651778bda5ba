"""The copy taken at emit of what a caller may go on mutating after logging.

``QueueHandler.prepare`` copies records shallowly: a caller that changes its
``properties`` dict after logging would change what is sent. The handler, the
client and ``bind()`` snapshot such values on the caller's thread, so this runs
on the hot path: leaves are tested inline rather than by a call each.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Dict, List

from ._json import MAX_DEPTH, safe_str

__all__ = ["MUTABLE_FIELDS", "SCALARS", "copy_tree", "snapshot", "snapshot_value"]

# Fields whose values are usually containers the caller may go on mutating.
MUTABLE_FIELDS = ("properties", "traits", "context", "integrations")

SCALARS = frozenset({str, int, float, bool, type(None)})
_CONTAINERS = (dict, list, tuple, set, bytearray)
# Leaves known to be immutable: kept without further checks.
_IMMUTABLE = frozenset(
    {dt.datetime, dt.date, dt.time, dt.timedelta, Decimal, uuid.UUID, bytes, complex, frozenset}
)


def snapshot(value: Any) -> Any:
    """Copy the containers a caller may mutate after logging; leave the rest as is.

    Dicts (and their subclasses) become dicts, lists lists, sets sets, tuples are
    rebuilt around copied items; other mappings and dataclass instances become
    dicts, as JSON will show them. Shared and self-referential containers stay
    shared and self-referential in the copy, so that the JSON made from it is the
    JSON the original would have made; nesting deeper than 64 becomes ``"<too deep>"``.
    Other objects are kept as they are and read when the message is encoded.

    Raises what ``value`` raises when it is read (its ``items()``, its iteration):
    a field that cannot be read is no field. A value inside it that cannot be read
    becomes its ``str()``, as the encoder would write it.
    """
    kind = type(value)
    if kind in SCALARS:
        return value
    if not isinstance(value, _CONTAINERS):
        # A mapping is copied into a dict; other objects (a dataclass given as
        # ``properties``, say) are left for validation to refuse.
        return _copy_leaf(value, {}, 0) if isinstance(value, Mapping) else value
    if kind is dict and isinstance(value, dict):
        for item in value.values():
            if type(item) not in SCALARS:
                break
        else:
            return value.copy()  # the common case: a flat dict of scalars, copied in one call
    return copy_tree(value, {}, 0)


def snapshot_value(value: Any) -> Any:
    """:func:`snapshot` of a value that goes inside a field (a record's other attributes
    become properties): what cannot be read becomes its ``str()``; never raises."""
    try:
        return snapshot(value)
    except Exception:
        return safe_str(value)


def _copy_leaf(value: Any, memo: Dict[int, Any], depth: int) -> Any:
    """A value that is not a scalar: containers are copied, mappings and dataclasses
    become dicts (copied), anything else is kept.

    Inside a container (``depth`` above 0), a value that raises when it is read
    becomes its ``str()``; at the top, what it raises is raised.
    """
    try:
        if isinstance(value, _CONTAINERS):
            return copy_tree(value, memo, depth)
        if type(value) in _IMMUTABLE or isinstance(value, enum.Enum):
            return value
        return _copy_object(value, memo, depth)
    except Exception:
        if depth == 0:
            raise
        text = safe_str(value)
        memo[id(value)] = text  # the same text wherever else it occurs
        return text


def _copy_object(value: Any, memo: Dict[int, Any], depth: int) -> Any:
    """A mapping or a dataclass as a dict, copied; any other object as it is."""
    done = memo.get(id(value))  # keyed by the original, which lives through the copy
    if done is not None:
        return done
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        pairs = [(f.name, getattr(value, f.name, None)) for f in dataclasses.fields(value)]
    else:
        return value
    if depth >= MAX_DEPTH:
        return "<too deep>"
    mapping: Dict[Any, Any] = {}
    memo[id(value)] = mapping
    for key, item in pairs:
        mapping[key] = item if type(item) in SCALARS else _copy_leaf(item, memo, depth + 1)
    return mapping


def copy_tree(value: Any, memo: Dict[int, Any], depth: int) -> Any:
    """A copy of ``value``, one of the containers (a dict, list, tuple, set or bytearray).

    ``memo`` maps the ids of the originals already copied to their copies; ``depth``
    counts the containers above ``value``.
    """
    done = memo.get(id(value))
    if done is not None:
        return done
    if depth >= MAX_DEPTH:
        return "<too deep>"
    depth += 1
    if isinstance(value, dict):
        mapping: Dict[Any, Any] = {}
        memo[id(value)] = mapping
        for key, item in value.items():
            mapping[key] = item if type(item) in SCALARS else _copy_leaf(item, memo, depth)
        return mapping
    if isinstance(value, list):
        items: List[Any] = []
        memo[id(value)] = items
        for item in value:
            items.append(item if type(item) in SCALARS else _copy_leaf(item, memo, depth))
        return items
    if isinstance(value, tuple):
        # Registered once built (it is immutable); a cycle through a tuple ends at MAX_DEPTH.
        copied = tuple(
            item if type(item) in SCALARS else _copy_leaf(item, memo, depth) for item in value
        )
        memo[id(value)] = copied
        return copied
    if isinstance(value, set):
        return set(value)
    return bytes(value)  # bytearray
