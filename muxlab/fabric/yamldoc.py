"""YAML as every muxlab file is read: yaml.safe_load, except that a key given twice in one
mapping is a problem, not a silent "the last one wins". Pure; no pydantic (agents read the
fabric with it)."""
from __future__ import annotations

from typing import Any

import yaml

_MERGE_TAG = "tag:yaml.org,2002:merge"


def load_unique(text: str) -> tuple[Any, list[tuple[str, Any, str]]]:
    """(the document, problems): each problem is (the mapping's path, the key, "duplicate key
    'k' (line N; first at line M)"). Merge keys (`<<: *base`) may still be overridden.
    yaml.YAMLError when the text is not YAML."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        problems: list[tuple[str, Any, str]] = []
        _duplicates(node, "", problems, set())
        return (None if problems else loader.construct_document(node)), problems
    finally:
        loader.dispose()


def _duplicates(node: yaml.Node, path: str, problems: list, seen_nodes: set) -> None:
    if id(node) in seen_nodes:   # an alias: checked where it was defined
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            label = key.value if isinstance(key, yaml.ScalarNode) else None
            if label is not None and key.tag != _MERGE_TAG:
                line = key.start_mark.line + 1
                if (key.tag, label) in first:
                    problems.append((path or "(document)", label,
                                     f"duplicate key {label!r} (line {line}; first at line {first[key.tag, label]})"))
                else:
                    first[key.tag, label] = line
            child = f"{path}.{label}" if path else str(label)
            _duplicates(value, child, problems, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _duplicates(item, f"{path}[{i}]", problems, seen_nodes)
