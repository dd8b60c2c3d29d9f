"""Reading YAML files safely: a bounded read of a regular file, and a loader that refuses
duplicate keys, alias bombs and lone surrogates. Used for events_config.yml and
--web.config.file; errors are UserErrors naming the file and the line.
"""
from __future__ import annotations

import os
import re
import stat
from typing import Any

import yaml

from pgne.errors import UserError

# A YAML alias (`*name`, also in `<<: *name`) re-uses a node: nodes added by aliases, counted as
# if every alias were written out, may number at most this. A config that shares a few defaults
# with `<<:` adds tens; a "billion laughs" file of 1 KB adds 10^8 or more.
MAX_ALIAS_NODES = 100_000
SURROGATE_RE = re.compile("[\ud800-\udfff]")


class ConfigYAMLError(yaml.MarkedYAMLError):
    """A YAML document pgne refuses although it is well-formed (alias bomb, lone surrogate)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last one).

    Only the keys written in the mapping itself count: a key that overrides one merged in
    with `<<: *anchor` is not a duplicate.

    It also bounds alias expansion (MAX_ALIAS_NODES), refuses recursive aliases, and turns
    UTF-16 surrogate escapes (JSON's "\\ud83d\\ude00") into the character they encode; a lone
    surrogate is not a character and is refused.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._alias_nodes = 0
        self._open_anchors: list[str] = []  # anchors of the collections being composed
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it holds, aliases expanded (capped)

    def compose_node(self, parent: Any, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise ConfigYAMLError(None, None, f"alias *{event.anchor} refers to a node that contains "
                                      f"it (a recursive alias)", event.start_mark)
            target = self.anchors.get(event.anchor)
            if target is not None:  # an undefined alias: PyYAML's own error follows
                self._alias_nodes += self._expanded_size(target)
                if self._alias_nodes > MAX_ALIAS_NODES:
                    raise ConfigYAMLError(None, None, f"aliases expand to more than {MAX_ALIAS_NODES:,} "
                                          f"nodes (at *{event.anchor}; a pgne config needs far fewer)",
                                          event.start_mark)
            return super().compose_node(parent, index)
        anchor = getattr(event, "anchor", None)
        if anchor is None:
            return super().compose_node(parent, index)
        self._open_anchors.append(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open_anchors.pop()

    def _expanded_size(self, node: yaml.Node) -> int:
        """Nodes in `node`'s tree with every alias written out; iterative (depth is unbounded)."""
        sizes, stack = self._sizes, [node]
        while stack:
            top = stack[-1]
            if id(top) in sizes:
                stack.pop()
                continue
            if isinstance(top, yaml.SequenceNode):
                children = top.value
            elif isinstance(top, yaml.MappingNode):
                children = [child for pair in top.value for child in pair]
            else:
                children = []
            pending = [child for child in children if id(child) not in sizes]
            if pending:
                stack.extend(pending)
                continue
            # capped: the sum only has to be compared with the limit, not to be exact beyond it
            sizes[id(top)] = min(1 + sum(sizes[id(child)] for child in children), MAX_ALIAS_NODES + 1)
            stack.pop()
        return sizes[id(node)]

    def construct_scalar(self, node: yaml.Node) -> Any:
        value = super().construct_scalar(node)
        if isinstance(value, str) and SURROGATE_RE.search(value):
            try:  # PyYAML decodes each \\uXXXX alone: join the pairs as JSON does
                value = value.encode("utf-16", "surrogatepass").decode("utf-16")
            except UnicodeDecodeError:
                lone = SURROGATE_RE.search(value).group()
                raise ConfigYAMLError(None, None, f"{ascii(lone)} is a lone UTF-16 surrogate, not a "
                                      f"character (a \\uD800-\\uDFFF escape must be half of a pair)",
                                      node.start_mark) from None
        return value


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable: construct_mapping below reports it as a YAML error
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)  # flattens `<<` merges itself


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str, text: str) -> Any:
    """The one non-empty YAML document in `text`; UserError (naming `path`) for anything else."""
    try:
        documents = [doc for doc in yaml.load_all(text, Loader=_UniqueKeyLoader) if doc is not None]
    except ConfigYAMLError as exc:
        mark = exc.problem_mark
        raise UserError(f"{path}: line {mark.line + 1}, column {mark.column + 1}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]  # one line per error
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        if isinstance(exc, yaml.reader.ReaderError):  # a character YAML refuses: no mark, a position
            where = f"character {exc.position + 1}: "
        raise UserError(f"{path}: {where}YAML syntax error: {problem}") from None
    except RecursionError:  # PyYAML's composer recurses: a few hundred levels of nesting
        raise UserError(f"{path}: nested too deeply to be a pgne config") from None
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError) as exc:
        # PyYAML's constructors raise these for values such as `!!int` (empty), `!!bool x`, or an
        # unquoted 2001-13-45 (read as a timestamp)
        raise UserError(f"{path}: YAML error: a value cannot be read ({type(exc).__name__}: {exc})") from None
    if not documents:
        raise UserError(f"{path}: the file holds no configuration (every YAML document is empty)")
    if len(documents) > 1:
        raise UserError(f"{path}: {len(documents)} non-empty YAML documents; expected one")
    return documents[0]



def shown_path(path: str | os.PathLike) -> str:
    """A path for a message: a NUL would end the line in a terminal, so it is shown as \\0."""
    return str(path).replace("\x00", "\\0")


def read_bounded(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`.

    OSError with a readable strerror otherwise: a FIFO or a device (/dev/zero) would block the
    reader or never end, and a NUL in the path is refused by the OS interface (ValueError).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except ValueError:
        raise OSError(0, "the path contains a NUL character") from None
    with os.fdopen(fd, "rb") as stream:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(21, "is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise OSError(0, "not a regular file")
        if info.st_size > max_bytes:
            raise OSError(0, f"{info.st_size:,} bytes; at most {max_bytes:,} are read")
        data = stream.read(max_bytes + 1)
        if len(data) > max_bytes:  # grew while we read it
            raise OSError(0, f"more than {max_bytes:,} bytes; at most {max_bytes:,} are read")
        return data
