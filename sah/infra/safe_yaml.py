"""Reading YAML and JSON that people hand us (studies, chain configs, ``run.yaml``):
bounded, strict, and every problem is one :class:`~sah.infra.checks.ConfigError` line.

- The text must be UTF-8.
- Before anything is built, the event stream is scanned: nesting deeper than
  ``MAX_DEPTH`` and documents that expand to more than ``max_nodes`` values (an alias
  counts the whole node it names, each time it is used: "billion laughs" alias bombs)
  are refused at once, as is an alias used inside the node it names (a recursive
  structure). The scan stops at the first excess, so a bomb fails in milliseconds.
- A key given twice in one mapping is refused with its YAML path (YAML's merge key
  ``<<`` may still be overridden, as YAML intends).
- Only plain data: the safe loader (libyaml's when installed) never builds Python objects.

:func:`sah.infra.checks.short_repr` formats a value for an error message in bounded time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import yaml

from sah.infra.checks import ConfigError, short_repr

MAX_DEPTH = 100            # nesting levels (mappings and lists)
MAX_NODES = 1_000_000      # values after alias expansion (chain configs, run.yaml)
MAX_STUDY_NODES = 100_000  # a study: large weights belong in hat_weight_file

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"

def read_text(path: Union[str, Path], where: Optional[str] = None) -> str:
    """A file's text, refused (one line) unless it is a readable UTF-8 file."""
    path = Path(path)
    where = where or str(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ConfigError(f"{where}: is a directory; expected a file") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                          f"{exc.start}); save the file as UTF-8") from None


# ---------------------------------------------------------------------- the scan
def _scan(text: str, where: str, max_nodes: int) -> None:
    """Refuse deep nesting, alias bombs and recursive aliases from the event stream."""
    loader = _BaseLoader(text)
    open_nodes: List[List[Any]] = []   # [anchor, size, depth below]
    anchors: Dict[str, Tuple[int, int]] = {}  # anchor -> (expanded size, depth below)
    total = 0

    def close(size: int, below: int, anchor: Optional[str]) -> None:
        nonlocal total
        if anchor is not None:
            anchors[anchor] = (size, below)
        if open_nodes:
            open_nodes[-1][1] += size
            open_nodes[-1][2] = max(open_nodes[-1][2], below + 1)
        else:
            total += size
        if total + sum(n[1] for n in open_nodes) > max_nodes:
            raise ConfigError(f"{where}: the document expands to more than {max_nodes:,} values "
                              f"(aliases count each time they are used); refusing it (an alias "
                              f"bomb?); write the values out, or keep large weights in a "
                              f"hat_weight_file")

    def check_depth(extra: int) -> None:
        if len(open_nodes) + extra > MAX_DEPTH:
            raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep; a study or "
                              f"config needs a few levels; check the file")

    try:
        while loader.check_event():
            event = loader.get_event()
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                open_nodes.append([event.anchor, 1, 0])
                check_depth(0)
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                anchor, size, below = open_nodes.pop()
                close(size, below, anchor)
            elif isinstance(event, yaml.ScalarEvent):
                close(1, 0, event.anchor)
            elif isinstance(event, yaml.AliasEvent):
                if event.anchor not in anchors:
                    if any(n[0] == event.anchor for n in open_nodes):
                        raise ConfigError(f"{where}: alias *{event.anchor} is used inside the node "
                                          f"it names (a recursive structure); write the values out")
                    continue  # an unknown alias: the composer reports it below
                size, below = anchors[event.anchor]
                check_depth(below)
                close(size, below, None)
    except yaml.YAMLError:
        return  # reported by the real parse, with its position
    finally:
        loader.dispose()


# ---------------------------------------------------------------------- paths, duplicates
def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _check_duplicates(node: Any, loader: Any, path: str, where: str, seen: set) -> None:
    """Walk the node graph (each shared node once) and refuse repeated mapping keys."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, loader, _join(path, i), where, seen)
    elif isinstance(node, yaml.MappingNode):
        lines: Dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = loader.construct_object(key_node, deep=True) \
                if isinstance(key_node, yaml.ScalarNode) else None
            label = short_repr(key) if key is not None else "?"
            try:
                if key is not None and key in lines:
                    raise ConfigError(
                        f"{where}: {_join(path, key)}: key {label} is given twice in one mapping "
                        f"(lines {lines[key]} and {key_node.start_mark.line + 1}); keep one")
                if key is not None:
                    lines[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: the constructor reports it
                pass
            _check_duplicates(value_node, loader, _join(path, key), where, seen)


def load_yaml(text: str, where: str = "config", max_nodes: int = MAX_NODES) -> Any:
    """Parse one YAML document safely (see the module doc); errors name ``where``."""
    _scan(text, where, max_nodes)
    loader = _BaseLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicates(node, loader, "", where, set())
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        first = " ".join(s.strip() for s in str(exc).strip().splitlines())
        raise ConfigError(f"{where}: not valid YAML ({first})") from None
    except RecursionError:  # not reached after the scan; kept as a last line of defence
        raise ConfigError(f"{where}: nested too deeply; check the file") from None
    finally:
        loader.dispose()


def load_yaml_file(path: Union[str, Path], where: Optional[str] = None,
                   max_nodes: int = MAX_NODES) -> Any:
    where = where or str(path)
    return load_yaml(read_text(path, where), where, max_nodes)


def _no_duplicates(where: str):
    def hook(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ConfigError(f"{where}: key {short_repr(key)} is given twice in one JSON "
                                  f"object; keep one")
            out[key] = value
        return out
    return hook


def _json_depth_ok(data: Any) -> bool:
    """Whether ``data`` nests at most ``MAX_DEPTH`` levels (iterative, stops early)."""
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return True


def load_json(text: str, where: str = "config") -> Any:
    """Parse JSON with the same rules: duplicate keys and deep nesting are refused."""
    too_deep = ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep; check the file")
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates(where))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise too_deep from None
    if not _json_depth_ok(data):
        raise too_deep
    return data
