"""One libyaml parse of a policy, straight from its events to Python data; line numbers and
duplicate keys only when there is something to report.

PyYAML's loaders first compose a node tree (two `Mark` objects per node) and then construct
the data from it in Python: for a 10,000-tenant policy (160,000 lines) that tree is ~80 MB
and most of the load's CPU. `parse` builds the data from libyaml's event stream instead,
with the loader's own resolver and scalar constructors, so the values are the ones
`yaml.load(text, CSafeLoader)` gives. A document it does not build itself (a tag on a
collection such as `!!set`, an alias to an undefined anchor, two documents) is handed to
PyYAML's composer and constructor whole, which also words the errors.

Line numbers (`Lines`) are what error messages need, so they are worked out only when the
first issue asks for one (or `parse` saw a mapping that may repeat a key), in a second pass
over the events (0.35 s for 10,000 tenants); a document with an alias gets the node walk.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Mapping
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
)

from gateway.policy.issues import Loc, PolicyIssue, fmt_path

# libyaml parses a 10,000-tenant policy (160,000 lines) in 0.2 s, the pure-Python parser in
# 5 s; that one is only for a PyYAML built without libyaml.
Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_VALUE = "tag:yaml.org,2002:value"
# The loader's implicit resolvers by a scalar's first character ("" for the empty scalar),
# each list followed by the wildcard ones, as `Resolver.resolve` tries them.
_WILD = tuple(Loader.yaml_implicit_resolvers.get(None, []))  # type: ignore[call-overload]
_RESOLVERS = {ch: tuple(rs) + _WILD for ch, rs in Loader.yaml_implicit_resolvers.items()
              if ch is not None}
_NO_KEY = object()
# What a scalar constructs to that may be shared by every occurrence of its text.
_IMMUTABLE = frozenset({int, float, bool, type(None), bytes, datetime.date, datetime.datetime})


class _Unusual(Exception):
    """Something `parse` leaves to PyYAML's own composer and constructor."""


def _plain_tag(value: str) -> str:
    for tag, regexp in _RESOLVERS.get(value[:1], _WILD):
        if regexp.match(value):
            return tag
    return _STR


class _Frame:
    """A mapping or sequence being built."""

    __slots__ = ("data", "key", "key_tag", "merges", "start_mark")

    def __init__(self, data: Any, start_mark: Any) -> None:
        self.data = data
        self.start_mark = start_mark
        self.key: Any = _NO_KEY
        self.key_tag: str | None = None
        self.merges: list[Any] | None = None


def _merge(frame: _Frame, overriding: set[int]) -> None:
    """Apply `<<` as `SafeConstructor.flatten_mapping` does: the merged mappings' keys first,
    then the mapping's own, which win. Which of two merged mappings wins a key they share
    differs between PyYAML versions (and, in 6.0, with the key's length), so such a mapping is
    left to PyYAML itself, as is a merged mapping whose own keys overrode what it merged."""
    sources: list[Any] = []
    for value in frame.merges or ():
        sources += value if isinstance(value, list) else [value]
    if not all(type(s) is dict and id(s) not in overriding for s in sources):
        raise _Unusual  # PyYAML words the error, or decides
    if len(sources) > 1 and sum(map(len, sources)) != len(set().union(*sources)):
        raise _Unusual
    own = dict(frame.data)
    frame.data.clear()  # the same object: an anchor on this mapping already points at it
    for s in sources:
        frame.data.update(s)
    if any(k in frame.data for k in own):
        overriding.add(id(frame.data))
    frame.data.update(own)


def _build(loader: Any) -> tuple[Any, bool]:
    """(data, whether some mapping may repeat a key), or `_Unusual`."""
    get = loader.get_event
    anchors: dict[str, Any] = {}
    stack: list[_Frame] = []
    suspect = False
    data: Any = None
    strings: dict[str, str] = {}
    overriding: set[int] = set()  # mappings whose own keys overrode merged ones
    scalars: dict[tuple[str, str], Any] = {}  # (tag, text) → value, for immutable values
    get()  # StreamStartEvent
    if isinstance(loader.peek_event(), StreamEndEvent):
        return None, False
    get()  # DocumentStartEvent
    while True:
        ev = get()
        cls = type(ev)
        tag: str | None = None
        if cls is ScalarEvent:
            tag = ev.tag
            if tag is None or tag == "!":
                tag = _plain_tag(ev.value) if ev.implicit[0] else _STR
            if tag == _STR:
                # One object per distinct string: 10,000 tenants repeat `limits`, `rpm`, …
                value: Any = strings.setdefault(ev.value, ev.value)
            elif tag in (_MERGE, _VALUE) and stack and stack[-1].key is _NO_KEY \
                    and type(stack[-1].data) is dict:
                value = ev.value  # a key: `<<` merges, `=` is the string "="
            elif (tag, ev.value) in scalars:
                value = scalars[tag, ev.value]
            else:
                node = yaml.ScalarNode(tag, ev.value, ev.start_mark, ev.end_mark, ev.style)
                try:
                    value = loader.construct_object(node, deep=True)
                except Exception:  # `!!int abc` is a ValueError
                    # PyYAML composes the whole document before it constructs anything: a
                    # syntax error further down would be the error it reports.
                    raise _Unusual from None
                loader.constructed_objects.pop(node, None)
                if type(value) in _IMMUTABLE:
                    scalars[tag, ev.value] = value
            if ev.anchor is not None:
                if ev.anchor in anchors:
                    raise _Unusual
                anchors[ev.anchor] = value
        elif cls is MappingStartEvent or cls is SequenceStartEvent:
            if ev.tag not in (None, "!", _MAP if cls is MappingStartEvent else _SEQ):
                raise _Unusual  # `!!set`, `!!omap`, a tag of the application's own
            frame = _Frame({} if cls is MappingStartEvent else [], ev.start_mark)
            if ev.anchor is not None:
                if ev.anchor in anchors:
                    raise _Unusual
                anchors[ev.anchor] = frame.data
            stack.append(frame)
            continue
        elif cls is AliasEvent:
            if ev.anchor not in anchors:
                raise _Unusual
            value = anchors[ev.anchor]
            tag = "alias"
        elif cls is MappingEndEvent:
            frame = stack.pop()
            if frame.merges is not None:
                _merge(frame, overriding)
            value = frame.data
        elif cls is SequenceEndEvent:
            value = stack.pop().data
        elif cls is DocumentEndEvent:
            if not isinstance(loader.peek_event(), StreamEndEvent):
                raise _Unusual  # a second document
            return data, suspect
        else:
            raise _Unusual
        if not stack:
            data = value
            continue
        parent = stack[-1]
        if type(parent.data) is list:
            parent.data.append(value)
        elif parent.key is _NO_KEY:
            if tag != _STR and tag not in (_MERGE, _VALUE):
                # Not a plain string key: a duplicate by the YAML text may differ as values
                # (`1` and "1"), so the line index decides. A list or mapping key is unusual.
                if isinstance(value, (list, dict)):
                    raise _Unusual
                suspect = True
            parent.key, parent.key_tag = value, tag
        else:
            if parent.key_tag == _MERGE:
                if parent.merges is None:
                    parent.merges = []
                parent.merges.append(value)
            else:
                if parent.key in parent.data:
                    suspect = True
                parent.data[parent.key] = value
            parent.key = _NO_KEY


def parse(text: str) -> tuple[Any, Lines, list[PolicyIssue]]:
    """(data, line index, duplicate-key issues). Raises `yaml.YAMLError` as PyYAML does."""
    loader = Loader(text)
    try:
        data, suspect = _build(loader)
    except _Unusual:
        data = None
    else:
        lines = Lines(text)
        return data, lines, lines.duplicates() if suspect else []
    finally:
        loader.dispose()
    # PyYAML's own way: compose the node tree, index it, then construct from it.
    loader = Loader(text)
    try:
        node = loader.get_single_node()
        lines = Lines(text)
        if node is None:
            lines.index(None)
            return None, lines, []
        # Before construction: it flattens merge keys into the node tree in place.
        lines.index(node)
        return loader.construct_document(node), lines, lines.duplicates()
    finally:
        loader.dispose()


class Lines(Mapping[Loc, int]):
    """The line of every path in the policy's YAML, indexed on first use: only a policy with
    a problem to report pays for it."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._lines: dict[Loc, int] | None = None
        self._dupes: list[PolicyIssue] = []

    def index(self, node: yaml.Node | None) -> None:
        self._lines, self._dupes = {}, []
        if node is not None:
            _index(node, (), self._lines, self._dupes)

    def _get(self) -> dict[Loc, int]:
        if self._lines is None:
            loader = Loader(self._text)
            try:
                found = _index_events(loader)
            finally:
                loader.dispose()
            if found is not None:
                self._lines, self._dupes = found
            else:  # an alias: the node walk gives its anchor's lines under its own path
                loader = Loader(self._text)
                try:
                    self.index(loader.get_single_node())
                finally:
                    loader.dispose()
        assert self._lines is not None
        return self._lines

    def duplicates(self) -> list[PolicyIssue]:
        """Every key a mapping repeats, at the repeat."""
        self._get()
        return list(self._dupes)

    def __getitem__(self, loc: Loc) -> int:
        return self._get()[loc]

    def __iter__(self) -> Iterator[Loc]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


class _Skip:
    """A key that is not indexed (a merge, a collection) or its value: events to pass over."""

    __slots__ = ("depth",)

    def __init__(self) -> None:
        self.depth = 1


class _Level:
    """A mapping or sequence whose children `_index_events` is indexing."""

    __slots__ = ("i", "in_value", "key", "path", "seen", "skip")

    def __init__(self, path: Loc, mapping: bool) -> None:
        self.path = path
        self.seen: dict[str, int] | None = {} if mapping else None
        self.key: str = ""
        self.in_value = False
        self.skip = False
        self.i = 0


def _index_events(loader: Any) -> tuple[dict[Loc, int], list[PolicyIssue]] | None:
    """What `_index` records, from the event stream: no node tree, so a 10,000-tenant policy
    with one warning to place does not pay 80 MB for it. None for a document with an alias
    (outside a merge), which the node walk indexes under every path it is reached by."""
    lines: dict[Loc, int] = {}
    dupes: list[PolicyIssue] = []
    stack: list[_Level | _Skip] = []
    while True:
        ev = loader.get_event()
        cls = type(ev)
        opens = cls is MappingStartEvent or cls is SequenceStartEvent
        closes = cls is MappingEndEvent or cls is SequenceEndEvent
        top = stack[-1] if stack else None
        if isinstance(top, _Skip):
            top.depth += opens - closes
            if not top.depth:
                stack.pop()
            continue
        if closes:
            stack.pop()
            continue
        if not (opens or cls is ScalarEvent or cls is AliasEvent):
            if cls is StreamEndEvent:
                return lines, dupes
            continue  # stream and document starts, the document's end
        line = ev.start_mark.line + 1
        if top is None:
            path: Loc = ()
        elif top.seen is not None and not top.in_value:  # a key
            if cls is AliasEvent:
                return None
            top.in_value = True
            tag = ev.tag if cls is ScalarEvent else None
            if cls is ScalarEvent and (tag is None or tag == "!"):
                tag = _plain_tag(ev.value) if ev.implicit[0] else _STR
            top.skip = cls is not ScalarEvent or tag == _MERGE
            if top.skip:
                if opens:
                    stack.append(_Skip())
                continue  # `<<: *defaults` overriding keys is the point of a merge
            key = ev.value
            if key in top.seen:
                dupes.append(PolicyIssue(
                    fmt_path((*top.path, key)),
                    f"duplicate key {key!r} (first at line {top.seen[key]}); YAML keeps only "
                    "the last one, so merge the two", line))
            else:
                top.seen[key] = line
            top.key = key
            lines[(*top.path, key)] = line
            continue
        elif top.seen is not None:  # a value
            top.in_value = False
            if top.skip:
                if opens:
                    stack.append(_Skip())
                continue
            path = (*top.path, top.key)
        else:
            path = (*top.path, top.i)
            top.i += 1
        if cls is AliasEvent:
            return None
        lines[path] = line
        if opens:
            stack.append(_Level(path, cls is MappingStartEvent))


def _index(node: yaml.Node, path: Loc, lines: dict[Loc, int],
           dupes: list[PolicyIssue]) -> None:
    """Record the line of every path, and every key a mapping repeats (YAML would silently
    keep only the last one: a second `providers:` replaces the first)."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for k, v in node.value:
            if k.tag == _MERGE or not isinstance(k, yaml.ScalarNode):
                continue  # `<<: *defaults` overriding keys is the point of a merge
            key, line = k.value, k.start_mark.line + 1
            if key in seen:
                dupes.append(PolicyIssue(
                    fmt_path((*path, key)),
                    f"duplicate key {key!r} (first at line {seen[key]}); YAML keeps only the "
                    "last one, so merge the two", line))
            else:
                seen[key] = line
            lines[(*path, key)] = line
            _index(v, (*path, key), lines, dupes)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _index(v, (*path, i), lines, dupes)
