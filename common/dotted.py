"""Dotted keys on nested dicts (`optim.blr` = `cfg["optim"]["blr"]`) and the diff of two configs.

Configs are nested dicts on disk and dotted keys on the command line (`key=value` overrides, sweep
`set:` blocks) and in messages ("differs in: optim.blr"): one spelling of the mapping between them.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

_MISSING = object()


class NotASectionError(ValueError):
    """`set_dotted` met a value where the key needs a section (`optim.blr.x` with `optim.blr` a number)."""

    def __init__(self, key: str, part: str):
        self.key, self.part = key, part
        super().__init__(f"'{key}': '{part}' is a value, not a section")


def get_dotted(d: Mapping, key: str, default: Any = None) -> Any:
    """`d["a"]["b"]` for key "a.b", or `default` where any part is missing (or not a section)."""
    node: Any = d
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def set_dotted(d: dict, key: str, value: Any) -> None:
    """Set `d["a"]["b"] = value` for key "a.b", creating missing sections; NotASectionError where a
    part of the key already holds a value."""
    node = d
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise NotASectionError(key, part)
        node = child
    node[parts[-1]] = value


def flatten(d: Any, prefix: str = "", leaves: Iterable[str] = ()) -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}. Sections named in `leaves` are kept whole (one value);
    an empty section contributes no key."""
    leaves = frozenset(leaves)
    if not isinstance(d, Mapping):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and str(k) not in leaves:
            out.update(flatten(v, key, leaves))
        else:
            out[key] = v
    return out


def changed_keys(old: Mapping, new: Mapping, ignore: Iterable[str] = (), leaves: Iterable[str] = ()) -> list[str]:
    """Sorted dotted keys whose values differ between two configs, added and removed keys included
    (a key set to None differs from a missing key). Keys starting with a prefix in `ignore` are left out."""
    a, b = flatten(old, leaves=leaves), flatten(new, leaves=leaves)
    ignore = tuple(ignore)
    return sorted(k for k in set(a) | set(b)
                  if a.get(k, _MISSING) != b.get(k, _MISSING) and not (ignore and k.startswith(ignore)))
