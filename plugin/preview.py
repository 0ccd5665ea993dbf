"""Template preview: render an email's Velocity template with an event, and say what is wrong.

The platform's email block deserializes one JSON param (``items``, named in the block) and
renders the template with Apache Velocity. This module does the same with ``airspeed`` (Velocity
for Python) and reports what the seed's troubleshooting list asks to check by hand:

- ``syntax``: a Velocity syntax error, with its line and column;
- ``json``: the JSON param is not valid JSON (the platform's *Wrong Format*);
- ``unresolved``: a rendered reference that resolves to nothing (``$!item.get('colour')``
  renders empty, ``$item.get('colour')`` renders its own text);
- ``case``: a reference that would resolve under a different case (``ImageUrl`` vs ``imageurl``:
  names are case-sensitive, the seed's own example);
- ``index``: an index past the array's end (``$data.get('array').get(5)``,
  ``$items.array[5]``), which fails the send on the platform;
- ``error``: any other failure while rendering.

What the template sees (the platform exposes the deserialized JSON param; this is our model of it):

- ``$data``: every param of the event by name, the JSON param deserialized, and the keys of the
  JSON param's object merged in, so ``$data.get('array')`` is the products' array;
- ``$items`` (the JSON param's name): the deserialized param. ``#foreach($item in $items)``
  iterates its array; ``$items.array``, ``$items.get('array')``, ``$items.get(0)`` and
  ``$items.size()`` work too;
- each other param by its name (``$email``, ``$cart_url``).

Objects behave like Java's ``Map`` (``get``, ``containsKey``, ``keySet``, ``size``,
``isEmpty``; ``$item.name`` is ``$item.get('name')``) and arrays like ``List`` (``get``,
``size``, ``isEmpty``, ``contains``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import types
from collections.abc import Iterator, Mapping
from typing import Any, Literal

Kind = Literal["syntax", "json", "unresolved", "case", "index", "error"]
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_LISTED = 12
_PROTOCOL = frozenset({"keys"})  # probed by airspeed's #foreach with hasattr(), not by templates


class PreviewError(ValueError):
    """The event given to preview is not a Generate event body; the message says why."""


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong with the template or the event, where it is and why."""

    kind: Kind
    line: int
    column: int
    reference: str
    """The template text concerned (``$!item.get('ImageUrl')``), or ``""``."""
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.kind}: {self.message}"


@dataclasses.dataclass(frozen=True)
class Preview:
    """The rendered template and the problems found, in template order."""

    output: str
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.problems


def load_body(text: str | bytes) -> dict[str, Any]:
    """A Generate event body from JSON text (as stored in the outbox or saved from the API)."""
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise PreviewError(f"the event is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise PreviewError("the event must be a JSON object with eventTypeKey and params")
    params = body.get("params")
    if not isinstance(params, list) or not all(
        isinstance(p, dict) and isinstance(p.get("name"), str) for p in params
    ):
        raise PreviewError("the event's params must be a list of {name, value} objects")
    return body


def render(template: str, body: Mapping[str, Any], json_param: str = "items") -> Preview:
    """Render ``template`` with the event ``body`` as the platform's email block would.

    ``json_param`` is the param the email's JSON block deserializes (``items`` by default).
    """
    import airspeed

    recorder = _Recorder(template)
    context, json_problem = _context(body, json_param, recorder)
    if json_problem is not None:
        recorder.add(json_problem)
    parsed = airspeed.Template(template, filename="template")
    try:
        parsed.ensure_compiled()
    except airspeed.TemplateSyntaxError as exc:
        recorder.add(_syntax_problem(exc, template))
        return Preview(output="", problems=recorder.problems())
    except RecursionError:
        recorder.add(Problem("syntax", 1, 1, "", "the template is nested too deeply to parse"))
        return Preview(output="", problems=recorder.problems())
    _instrument(parsed.root_element, recorder)
    stream = _LimitedStream()
    try:
        parsed.merge_to(_Namespace(context, recorder), stream)
    except airspeed.TemplateExecutionError as exc:
        line, column = recorder.position(exc.element)
        cause = exc.__cause__
        if isinstance(cause, _TooLong):
            reason = f"the output is over {MAX_OUTPUT} characters; rendering stopped here"
        else:
            reason = f"{type(cause).__name__}: {cause}" if cause is not None else "failed"
        recorder.add(Problem("error", line, column, exc.element.my_text(), reason))
    return Preview(output=stream.getvalue(), problems=recorder.problems())


MAX_OUTPUT = 2_000_000


class _TooLong(Exception):
    pass


class _LimitedStream(io.StringIO):
    """airspeed's output stream (``#stop`` sets ``stop``), cut off at :data:`MAX_OUTPUT`."""

    stop = False

    def write(self, text: str) -> int:
        if self.stop:
            return 0
        if self.tell() + len(text) > MAX_OUTPUT:
            raise _TooLong
        return super().write(text)


# ------------------------------------------------------------------------------ context


def _context(
    body: Mapping[str, Any], json_param: str, recorder: _Recorder
) -> tuple[dict[str, Any], Problem | None]:
    params: dict[str, Any] = {}
    for param in body.get("params") or []:
        if isinstance(param, Mapping) and isinstance(param.get("name"), str):
            params[param["name"]] = param.get("value")
    problem = None
    variables: dict[str, Any] = {}
    deserialized: Any = None
    for name, value in params.items():
        if name == json_param:
            try:
                deserialized = json.loads(value) if isinstance(value, str) else value
            except ValueError as exc:
                problem = Problem(
                    "json", 1, 1, "", f"the {name} param is not valid JSON (Wrong Format): {exc}"
                )
                deserialized = None
            variables[name] = _wrap(deserialized, name, recorder, as_param=True)
        else:
            variables[name] = _wrap(value, name, recorder)
    if json_param not in params:
        problem = Problem(
            "json", 1, 1, "", f"the event has no {json_param} param for the JSON block"
        )
    data = dict(variables)
    if isinstance(deserialized, dict):
        for key, value in deserialized.items():
            data.setdefault(key, _wrap(value, f"{json_param}.{key}", recorder))
    context = {name: value for name, value in variables.items() if _IDENTIFIER.fullmatch(name)}
    context["data"] = _Map(data, "data", recorder)
    return context, problem


def _wrap(value: Any, path: str, recorder: _Recorder, *, as_param: bool = False) -> Any:
    if isinstance(value, dict):
        array = value.get("array")
        if as_param and isinstance(array, list):
            return _Param(value, path, recorder)
        return _Map(value, path, recorder)
    if isinstance(value, list):
        return _List(value, path, recorder)
    return value


def _similar(name: str, names: list[str]) -> str | None:
    folded = name.casefold()
    return next((n for n in names if n != name and n.casefold() == folded), None)


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (", …" if len(names) > _MAX_LISTED else "") if names else "none"


class _Map:
    """A JSON object as Velocity templates see a Java ``Map``; misses are recorded."""

    _METHODS = ("get", "containsKey", "keySet", "values", "size", "isEmpty")

    def __init__(self, data: dict[str, Any], path: str, recorder: _Recorder) -> None:
        self._data = data
        self._path = path
        self._recorder = recorder

    def _miss(self, name: str, how: str) -> None:
        fields = list(self._data)
        similar = _similar(name, fields + list(self._METHODS))
        if similar is not None:
            self._recorder.note(
                "case",
                f"{how} {name!r} is not in {self._path}, {similar!r} is: names are case-sensitive",
            )
        else:
            self._recorder.note(
                "unresolved", f"{self._path} has no {name!r} (it has: {_listed(fields)})"
            )

    def get(self, key: object) -> Any:
        if isinstance(key, str) and key in self._data:
            return _wrap(self._data[key], f"{self._path}.{key}", self._recorder)
        self._miss(str(key), "field")
        return None

    def __getitem__(self, key: object) -> Any:
        if isinstance(key, str) and key in self._data:
            return _wrap(self._data[key], f"{self._path}.{key}", self._recorder)
        raise KeyError(key)  # airspeed then tries a method of that name, then __getattr__

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_") and name not in _PROTOCOL:
            self._miss(name, "field")
        raise AttributeError(name)

    def containsKey(self, key: object) -> bool:
        return key in self._data

    def keySet(self) -> list[str]:
        return list(self._data)

    def values(self) -> list[Any]:
        return [_wrap(v, self._path, self._recorder) for v in self._data.values()]

    def size(self) -> int:
        return len(self._data)

    def isEmpty(self) -> bool:
        return not self._data

    def __iter__(self) -> Iterator[Any]:  # Velocity's #foreach over a Map visits its values
        return iter(self.values())

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        return True  # a Java object is "true" in #if, even when empty

    def __str__(self) -> str:
        return "{" + ", ".join(f"{k}={_java_text(v)}" for k, v in self._data.items()) + "}"


class _Param(_Map):
    """The JSON param (``{"array": [...]}``): a Map that also iterates and indexes its array."""

    def _array(self) -> _List:
        array = self._data["array"]
        return _List(array, f"{self._path}.array", self._recorder)

    def get(self, key: object) -> Any:
        if isinstance(key, int) and not isinstance(key, bool):
            return self._array().get(key)
        return super().get(key)

    def size(self) -> int:
        return len(self._data["array"])

    def __iter__(self) -> Iterator[Any]:
        return iter(self._array())

    def __len__(self) -> int:
        return len(self._data["array"])


class _List:
    """A JSON array as Velocity templates see a Java ``List``; bad indexes are recorded."""

    def __init__(self, data: list[Any], path: str, recorder: _Recorder) -> None:
        self._data = data
        self._path = path
        self._recorder = recorder

    def _at(self, index: object) -> Any:
        if isinstance(index, bool) or not isinstance(index, int):
            self._recorder.note("index", f"{self._path} needs a whole number index, got {index!r}")
            return None
        if not 0 <= index < len(self._data):
            size = len(self._data)
            where = "past the end of" if index >= 0 else "outside"
            last = f"the last index is {size - 1}" if size else "it is empty"
            self._recorder.note(
                "index",
                f"index {index} is {where} {self._path}: it has {size} "
                f"element{'' if size == 1 else 's'}, {last}; the platform fails the send",
            )
            return None
        return _wrap(self._data[index], f"{self._path}[{index}]", self._recorder)

    def get(self, index: object) -> Any:
        return self._at(index)

    def __getitem__(self, index: object) -> Any:
        if isinstance(index, str):
            raise KeyError(index)  # airspeed looking for a method of that name
        return self._at(index)

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_") and name not in _PROTOCOL:
            methods = ["get", "size", "isEmpty", "contains"]
            similar = _similar(name, methods)
            if similar is not None:
                self._recorder.note(
                    "case", f"{self._path} has no {name!r}, {similar!r} is: case-sensitive"
                )
            else:
                self._recorder.note(
                    "unresolved",
                    f"{self._path} is an array: it has no {name!r} (use get(i), size())",
                )
        raise AttributeError(name)

    def size(self) -> int:
        return len(self._data)

    def isEmpty(self) -> bool:
        return not self._data

    def contains(self, value: object) -> bool:
        return value in self._data

    def __iter__(self) -> Iterator[Any]:
        return (_wrap(v, f"{self._path}[{i}]", self._recorder) for i, v in enumerate(self._data))

    def __len__(self) -> int:
        return len(self._data)

    def __bool__(self) -> bool:
        return True

    def __str__(self) -> str:
        return "[" + ", ".join(_java_text(v) for v in self._data) + "]"


def _java_text(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_java_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_java_text(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class _Namespace(dict[str, Any]):
    """The template's top-level variables; a lookup that misses is recorded."""

    def __init__(self, values: dict[str, Any], recorder: _Recorder) -> None:
        super().__init__(values)
        self._recorder = recorder

    def __getitem__(self, key: str) -> Any:
        try:
            return super().__getitem__(key)
        except KeyError:
            if not key.startswith("#"):  # '#name' is airspeed looking for a macro
                names = [n for n in self if not n.startswith("#")]
                similar = _similar(key, names)
                if similar is not None:
                    self._recorder.note(
                        "case", f"there is no ${key}, ${similar} is: names are case-sensitive"
                    )
                else:
                    listed = _listed([f"${n}" for n in names])
                    self._recorder.note("unresolved", f"there is no ${key} (there are {listed})")
            raise


# ------------------------------------------------------------------------------ recording


@dataclasses.dataclass
class _Frame:
    reference: Any
    notes: list[tuple[Kind, str]] = dataclasses.field(default_factory=list)


class _Recorder:
    """Collects problems; knows which reference is being evaluated and where it is."""

    def __init__(self, template: str) -> None:
        self._template = template
        self._stack: list[_Frame] = []
        self._found: dict[tuple[int, int, Kind, str], Problem] = {}
        self._offsets: dict[int, int] = {}
        self._roles: dict[int, str] = {}

    def place(self, element: Any, offset: int, role: str | None = None) -> None:
        self._offsets[id(element)] = offset
        if role is not None:
            self._roles[id(element)] = role

    def position(self, element: Any) -> tuple[int, int]:
        offset = self._offsets.get(id(element), getattr(element, "start", 0))
        line = self._template.count("\n", 0, offset) + 1
        column = offset - (self._template.rfind("\n", 0, offset) + 1) + 1
        return line, column

    def add(self, problem: Problem) -> None:
        # A reference inside #foreach is evaluated once per element: report it once.
        self._found.setdefault(
            (problem.line, problem.column, problem.kind, problem.reference or problem.message),
            problem,
        )

    def problems(self) -> tuple[Problem, ...]:
        return tuple(sorted(self._found.values(), key=lambda p: (p.line, p.column)))

    def note(self, kind: Kind, message: str) -> None:
        if self._stack:
            self._stack[-1].notes.append((kind, message))

    def enter(self, reference: Any) -> None:
        self._stack.append(_Frame(reference))

    def leave(self, value: Any) -> None:
        frame = self._stack.pop()
        reference = frame.reference
        line, column = self.position(reference)
        text = reference.my_text()
        role = self._roles.get(id(reference), "expression")
        always = [(k, m) for k, m in frame.notes if k in ("case", "index")]
        for kind, message in always:
            self.add(Problem(kind, line, column, text, f"{text}: {message}"))
        if value is not None or always or role == "expression":
            return
        if reference.alternate is not None:  # ${x|'default'} shows its default
            return
        missing = [m for k, m in frame.notes if k == "unresolved"]
        why = missing[-1] if missing else "resolves to nothing"
        shown = "renders empty" if reference.silent else "renders as its own text"
        if role == "collection":
            shown = "gives #foreach nothing to loop over"
        self.add(Problem("unresolved", line, column, text, f"{text} {shown}: {why}"))


_SYNTAX = re.compile(r"line \d+, column \d+: expected (.*?) in (.*?), got: (.*) \.\.\.$", re.S)


def _syntax_problem(exc: Any, template: str) -> Problem:
    match = _SYNTAX.match(str(exc))
    if match is None:  # pragma: no cover - airspeed's message format changed
        message = str(exc)
    else:
        expected, where, got = match.groups()
        first = got.split("\n", 1)[0].strip()
        if first:
            found = repr(first)
        else:
            found = "the end of the line" if got.strip() else "the end of the template"
        message = f"expected {expected} in the {where}, got {found}"
    element = exc.element
    opened = template.count("\n", 0, element.start) + 1
    directive = re.match(r"#\{?([a-z]+)", element.my_text() or "", re.IGNORECASE)
    if directive and opened != exc.line:
        message += f" (the #{directive.group(1)} on line {opened} is not closed)"
    return Problem("syntax", exc.line, exc.column, "", message)


def _instrument(root: Any, recorder: _Recorder) -> None:
    """Wrap every reference of the parsed template so that its evaluation is recorded."""
    import airspeed

    element_type = airspeed._Element
    function_type = airspeed._FunctionDefinition
    seen: set[int] = set()

    def wrap(reference: Any) -> None:
        expression = reference.expression
        if expression is None:
            return
        inner = expression.calculate

        def calculate(namespace: Any, loader: Any, global_namespace: Any = None) -> Any:
            recorder.enter(reference)
            value = None
            try:
                value = inner(namespace, loader, global_namespace)
                if callable(value) and not isinstance(value, function_type):
                    # $item.size: Velocity reads a property, not the method (size() calls it)
                    recorder.note("unresolved", "a method without (): call it, e.g. .size()")
                    value = None
            finally:
                recorder.leave(value)
            return value

        expression.calculate = calculate
        reference.calculate = calculate

    def walk(node: Any, base: int, role: str | None) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        recorder.place(node, base + node.start, role)
        if isinstance(node, airspeed.FormalReference):
            wrap(node)
        inner_base = base + node.start + 1 if isinstance(node, airspeed.StringLiteral) else base
        children: list[tuple[Any, str | None]] = []
        if isinstance(node, airspeed.Block):
            children = [(child, "output") for child in node.children]
        elif isinstance(node, airspeed.ForeachDirective):
            collection = node.value.expression
            children = [(collection, "collection"), (node.block, None)]
        for name, value in vars(node).items():
            if name in ("children",) or (
                isinstance(node, airspeed.ForeachDirective) and name in ("block",)
            ):
                continue
            for child in _elements(value, element_type):
                children.append((child, None))
        for child, child_role in children:
            walk(child, inner_base, child_role)

    walk(root, 0, None)


def _elements(value: Any, element_type: type) -> list[Any]:
    if isinstance(value, element_type):
        return [value]
    if isinstance(value, types.MethodType) and isinstance(value.__self__, element_type):
        return [value.__self__]  # airspeed keeps some parsed parts only as ``calculate``
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, element_type)]
    if isinstance(value, dict):
        return [v for pair in value.items() for v in pair if isinstance(v, element_type)]
    return []
