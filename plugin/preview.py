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
- ``refused``: the template reaches for something of Python rather than of the event's data
  (a name starting with ``_``, ``$x.format(...)``, a method off the allow-list below,
  ``#evaluate``, ``#include``, ``#parse``, ``#set`` into data); refused where it is written,
  never run;
- ``error``: any other failure while rendering.

What the template sees (the platform exposes the deserialized JSON param; this is our model of it):

- ``$data``: every param of the event by name, the JSON param deserialized, and the keys of the
  JSON param's object merged in, so ``$data.get('array')`` is the products' array;
- ``$items`` (the JSON param's name): the deserialized param. ``#foreach($item in $items)``
  iterates its array; ``$items.array``, ``$items.get('array')``, ``$items.get(0)`` and
  ``$items.size()`` work too;
- each other param by its name (``$email``, ``$cart_url``).

Objects behave like Java's ``Map`` (``get``, ``containsKey``, ``containsValue``, ``keySet``,
``values``, ``entrySet``, ``size``, ``isEmpty``; ``$item.name`` is ``$item.get('name')``) and
arrays like ``List`` (``get``, ``size``, ``isEmpty``, ``contains``, ``indexOf``); texts answer
Java's ``String`` methods listed in ``_TEXT_METHODS``, numbers and booleans a few of theirs.

The template is sandboxed: airspeed would let ``$a.b`` reach any Python attribute and call it,
so every ``$name``/``.name``/``.name(...)`` of the parsed template is resolved here instead
(:func:`_resolve`), against the wrappers' explicit allow-lists; literals, loop variables and
``#set`` values become the same wrappers before anything is looked up on them. Rendering is
bounded too: :data:`MAX_OUTPUT` characters of output or any one text, :data:`MAX_STEPS` loop
iterations and macro calls (weighted), numbers within Java's ``long``.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import inspect
import io
import json
import re
import types
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal

Kind = Literal["syntax", "json", "unresolved", "case", "index", "refused", "error"]
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_LISTED = 12


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
    except ValueError:  # int() of a literal over Python's digit limit
        recorder.add(Problem("syntax", 1, 1, "", "the template has a number too long to parse"))
        return Preview(output="", problems=recorder.problems())
    _instrument(parsed.root_element, recorder)
    stream = _LimitedStream()
    try:
        parsed.merge_to(_Namespace(context, recorder), stream)
    except airspeed.TemplateExecutionError as exc:
        line, column = recorder.position(exc.element)
        cause = exc.__cause__
        if isinstance(cause, _TooLong):
            reason = f"the output or a text is over {MAX_OUTPUT} characters; rendering stopped here"
        elif isinstance(cause, _TooManySteps):
            reason = (
                f"the template loops or calls macros more than {MAX_STEPS} steps allow; "
                "rendering stopped here"
            )
        else:
            reason = f"{type(cause).__name__}: {cause}" if cause is not None else "failed"
        recorder.add(Problem("error", line, column, exc.element.my_text(), reason))
    return Preview(output=stream.getvalue(), problems=recorder.problems())


MAX_OUTPUT = 2_000_000
"""Characters of output, and of any one text the template builds."""
MAX_STEPS = 100_000
"""Steps of one render: each #foreach iteration is one, each macro call :data:`_MACRO_STEPS`."""
_MACRO_STEPS = 10  # a macro call costs airspeed about ten loop iterations' time


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


def _similar(name: str, names: Iterable[str]) -> str | None:
    folded = name.casefold()
    return next((n for n in names if n != name and n.casefold() == folded), None)


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (", …" if len(names) > _MAX_LISTED else "") if names else "none"


class _BadIndex(Exception):
    """An index outside a text or an array: reported as an ``index`` problem."""


class _Value(abc.ABC):
    """Template data other than text, numbers and booleans: what a template may do with it.

    Only the names in :attr:`METHODS` can be called, and only through :func:`_resolve`;
    ``.name`` without parentheses goes to :meth:`_property`. Nothing else of the Python object
    is reachable from a template.
    """

    METHODS: ClassVar[frozenset[str]] = frozenset()
    KIND: ClassVar[str] = "a value"

    @abc.abstractmethod
    def _property(self, name: str) -> Any:
        """``$value.name`` without parentheses: what this kind of value answers for it."""

    def equals(self, other: object) -> bool:
        return other is self

    def toString(self) -> str:
        return str(self)

    def __bool__(self) -> bool:
        return True  # a Java object is "true" in #if, even when empty

    def __str__(self) -> str:
        return _java_text(self)

    def __repr__(self) -> str:
        return _java_text(self)


class _Map(_Value):
    """A JSON object as Velocity templates see a Java ``Map``; misses are recorded."""

    METHODS = frozenset(
        {"get", "containsKey", "containsValue", "keySet", "values", "entrySet", "size",
         "isEmpty", "equals", "toString"}
    )  # fmt: skip
    KIND = "an object"

    def __init__(self, data: dict[Any, Any], path: str, recorder: _Recorder) -> None:
        self._data = data
        self._path = path
        self._recorder = recorder

    def _miss(self, name: str, how: str) -> None:
        fields = [str(k) for k in self._data]
        similar = _similar(name, fields + sorted(self.METHODS))
        if similar is not None:
            self._recorder.note(
                "case",
                f"{how} {name!r} is not in {self._path}, {similar!r} is: names are case-sensitive",
            )
        else:
            self._recorder.note(
                "unresolved", f"{self._path} has no {name!r} (it has: {_listed(fields)})"
            )

    def _property(self, name: str) -> Any:
        if name in self._data:
            return _wrap(self._data[name], f"{self._path}.{name}", self._recorder)
        if name in self.METHODS:
            self._recorder.note("unresolved", "a method without (): call it, e.g. .size()")
        else:
            self._miss(name, "field")
        return None

    def get(self, key: object) -> Any:
        if isinstance(key, str) and key in self._data:
            return _wrap(self._data[key], f"{self._path}.{key}", self._recorder)
        self._miss(str(key), "field")
        return None

    def __getitem__(self, key: object) -> Any:  # $map['key']
        if isinstance(key, str) and key in self._data:
            return _wrap(self._data[key], f"{self._path}.{key}", self._recorder)
        raise KeyError(key)

    def containsKey(self, key: object) -> bool:
        return isinstance(key, str) and key in self._data

    def containsValue(self, value: object) -> bool:
        return any(_same(value, v) for v in self._data.values())

    def keySet(self) -> _List:
        return _List(list(self._data), f"{self._path}.keySet()", self._recorder)

    def values(self) -> _List:
        return _List(list(self._data.values()), self._path, self._recorder)

    def entrySet(self) -> _List:
        entries = [_Entry(k, v, f"{self._path}.{k}", self._recorder) for k, v in self._data.items()]
        return _List(entries, f"{self._path}.entrySet()", self._recorder)

    def size(self) -> int:
        return len(self._data)

    def isEmpty(self) -> bool:
        return not self._data

    def equals(self, other: object) -> bool:
        return isinstance(other, _Map) and other._data == self._data

    def __iter__(self) -> Iterator[Any]:  # Velocity's #foreach over a Map visits its values
        return iter(self.values())

    def __len__(self) -> int:
        return len(self._data)


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


class _List(_Value):
    """A JSON array (or a list or range the template made) as a Java ``List``."""

    METHODS = frozenset({"get", "size", "isEmpty", "contains", "indexOf", "equals", "toString"})
    KIND = "an array"

    def __init__(self, data: Sequence[Any], path: str, recorder: _Recorder) -> None:
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

    def _property(self, name: str) -> Any:
        if name in self.METHODS:
            self._recorder.note("unresolved", "a method without (): call it, e.g. .size()")
            return None
        similar = _similar(name, sorted(self.METHODS))
        if similar is not None:
            self._recorder.note(
                "case", f"{self._path} has no {name!r}, {similar!r} is: case-sensitive"
            )
        else:
            self._recorder.note(
                "unresolved", f"{self._path} is an array: it has no {name!r} (use get(i), size())"
            )
        return None

    def get(self, index: object) -> Any:
        return self._at(index)

    def __getitem__(self, index: object) -> Any:  # $list[0]
        if isinstance(index, str):
            raise KeyError(index)
        return self._at(index)

    def size(self) -> int:
        return len(self._data)

    def isEmpty(self) -> bool:
        return not self._data

    def contains(self, value: object) -> bool:
        return any(_same(value, v) for v in self._data)

    def indexOf(self, value: object) -> int:
        return next((i for i, v in enumerate(self._data) if _same(value, v)), -1)

    def equals(self, other: object) -> bool:
        return isinstance(other, _List) and list(other._data) == list(self._data)

    def __iter__(self) -> Iterator[Any]:
        return (_wrap(v, f"{self._path}[{i}]", self._recorder) for i, v in enumerate(self._data))

    def __len__(self) -> int:
        return len(self._data)


class _Entry(_Value):
    """One ``Map.Entry`` of :meth:`_Map.entrySet`: ``getKey()``/``.key``, ``getValue()``."""

    METHODS = frozenset({"getKey", "getValue", "equals", "toString"})
    KIND = "a map entry"

    def __init__(self, key: Any, value: Any, path: str, recorder: _Recorder) -> None:
        self._key = key
        self._value = value
        self._path = path
        self._recorder = recorder

    def _property(self, name: str) -> Any:
        if name in ("key", "value"):
            return self.getKey() if name == "key" else self.getValue()
        self._recorder.note("unresolved", f"an entry has no {name!r} (it has: key, value)")
        return None

    def getKey(self) -> Any:
        return self._key

    def getValue(self) -> Any:
        return _wrap(self._value, self._path, self._recorder)


def _same(a: object, b: object) -> bool:
    """Java's ``equals`` between template values and raw JSON values."""
    if isinstance(a, _Map | _List):
        a = a._data
    if isinstance(b, _Map | _List):
        b = b._data
    return (type(a) is type(b) and bool(a == b)) or (_is_number(a) and _is_number(b) and a == b)


def _java_text(value: Any) -> str:
    """``value`` as Java's ``toString`` shows it, cut off past :data:`MAX_OUTPUT`."""
    parts: list[str] = []
    size = 0

    def put(text: str) -> None:
        nonlocal size
        size += len(text)
        if size > MAX_OUTPUT:
            raise _TooLong
        parts.append(text)

    def walk(item: Any) -> None:
        if isinstance(item, _Entry):
            walk(item._key)
            put("=")
            walk(item._value)
            return
        if isinstance(item, _Map | _List):
            item = item._data
        if isinstance(item, dict):
            put("{")
            for i, (key, inner) in enumerate(item.items()):
                put(f"{', ' if i else ''}{key}=")
                walk(inner)
            put("}")
        elif isinstance(item, list | tuple | range):
            put("[")
            for i, inner in enumerate(item):
                if i:
                    put(", ")
                walk(inner)
            put("]")
        elif item is None:
            put("null")
        elif isinstance(item, bool):
            put("true" if item else "false")
        else:
            put(str(item))

    walk(value)
    return "".join(parts)


# ------------------------------------------------------------------------------ text, numbers


def _is_number(value: object) -> bool:
    return type(value) in (int, float)


def _text(method: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{method}() takes text, got {_java_text(value)[:40]!r}")
    return value


def _whole(method: str, value: object) -> int:
    if type(value) is not int:
        raise TypeError(f"{method}() takes a whole number, got {_java_text(value)[:40]!r}")
    return value


def _substring(s: str, begin: object, end: object = None) -> str:
    first = _whole("substring", begin)
    last = len(s) if end is None else _whole("substring", end)
    if not 0 <= first <= last <= len(s):
        raise _BadIndex(
            f"substring({first}{'' if end is None else f', {last}'}) is outside a text of "
            f"{len(s)} characters; the platform fails the send"
        )
    return s[first:last]


def _char_at(s: str, index: object) -> str:
    at = _whole("charAt", index)
    if not 0 <= at < len(s):
        raise _BadIndex(
            f"charAt({at}) is outside a text of {len(s)} characters; the platform fails the send"
        )
    return s[at]


def _bounded(text: str) -> str:
    if len(text) > MAX_OUTPUT:
        raise _TooLong
    return text


def _compare(a: Any, b: Any) -> int:
    return int(a > b) - int(a < b)


_JAVA_SPACE = "".join(chr(c) for c in range(33))  # String.trim() strips every char <= ' '

_TEXT_METHODS: dict[str, Callable[..., Any]] = {
    "length": lambda s: len(s),
    "isEmpty": lambda s: not s,
    "toUpperCase": lambda s: s.upper(),
    "toLowerCase": lambda s: s.lower(),
    "trim": lambda s: s.strip(_JAVA_SPACE),
    "equals": lambda s, o: isinstance(o, str) and s == o,
    "equalsIgnoreCase": lambda s, o: isinstance(o, str) and s.casefold() == o.casefold(),
    "contains": lambda s, o: _text("contains", o) in s,
    "startsWith": lambda s, o: s.startswith(_text("startsWith", o)),
    "endsWith": lambda s, o: s.endswith(_text("endsWith", o)),
    "indexOf": lambda s, o, start=0: s.find(_text("indexOf", o), _whole("indexOf", start)),
    "lastIndexOf": lambda s, o: s.rfind(_text("lastIndexOf", o)),
    "substring": _substring,
    "charAt": _char_at,
    "replace": lambda s, a, b: _bounded(s.replace(_text("replace", a), _text("replace", b))),
    "concat": lambda s, o: _bounded(s + _text("concat", o)),
    "compareTo": lambda s, o: _compare(s, _text("compareTo", o)),
    "toString": lambda s: s,
}
_NUMBER_METHODS: dict[str, Callable[..., Any]] = {
    "toString": lambda n: _java_text(n),
    "equals": lambda n, o: type(o) is type(n) and n == o,
    "intValue": lambda n: int(n),
    "longValue": lambda n: int(n),
    "doubleValue": lambda n: float(n),
    "compareTo": lambda n, o: _compare(n, o) if _is_number(o) else _compare(n, float("nan")),
}
_BOOLEAN_METHODS: dict[str, Callable[..., Any]] = {
    "toString": lambda b: _java_text(b),
    "equals": lambda b, o: o is b,
    "booleanValue": lambda b: b,
}
_SCALARS: dict[type, tuple[str, dict[str, Callable[..., Any]]]] = {
    str: ("a text", _TEXT_METHODS),
    int: ("a number", _NUMBER_METHODS),
    float: ("a number", _NUMBER_METHODS),
    bool: ("a boolean", _BOOLEAN_METHODS),
}


# ------------------------------------------------------------------------------ resolving


class _Foreign(TypeError):
    """A Python object that is not template data reached the template (never expected)."""


def _data(value: Any, recorder: _Recorder) -> Any:
    """``value`` as template data: JSON-like values and the wrappers, nothing else."""
    kind = type(value)
    if value is None or kind in _SCALARS or isinstance(value, _Value):
        return value
    if kind is dict:
        return _Map(value, "the map", recorder)
    if kind in (list, tuple, range):
        return _List(value, "the list", recorder)
    raise _Foreign(f"the template reached a {kind.__name__}, which is not template data")


def _methods_of(target: Any) -> tuple[str, Collection[str]]:
    if isinstance(target, _Value):
        return target.KIND, target.METHODS
    return _SCALARS[type(target)][0], _SCALARS[type(target)][1].keys()


def _resolve(node: Any, recorder: _Recorder, current: Any, loader: Any, top_namespace: Any) -> Any:
    """``$name``, ``.name``, ``.name(...)`` or ``.name[i]``: airspeed's ``NameOrCall`` with
    nothing of Python reachable (airspeed's own does getattr and calls what it finds)."""
    import airspeed

    name: str = node.name
    top = isinstance(current, airspeed.LocalNamespace)
    if current is None and not top:
        return None  # a member of null: Velocity renders the reference as written
    if name.startswith("_"):
        recorder.refuse(node, _UNDERSCORE.format(name=name))
        return None
    if top:  # the first name of a reference
        try:
            value = current[name]
        except KeyError:
            value = None
        if isinstance(value, airspeed._FunctionDefinition):  # a #define'd block
            args = node.parameters.calculate(top_namespace, loader) if node.parameters else []
            stream = _LimitedStream()
            value.execute_function(stream, top_namespace, args, loader)
            value = stream.getvalue()
        elif node.parameters is not None and value is not None:
            recorder.refuse(node, f"${name} is data, not a method: it cannot be called")
            return None
    else:
        value = _member(node, recorder, _data(current, recorder), name, loader, top_namespace)
    if node.index is not None and value is not None:
        index = node.index.calculate(top_namespace, loader)
        try:
            value = _data(value, recorder)[index]
        except (LookupError, TypeError):
            value = None
    return _data(value, recorder)


def _member(
    node: Any, recorder: _Recorder, target: Any, name: str, loader: Any, top_namespace: Any
) -> Any:
    kind, methods = _methods_of(target)
    allowed = f"{kind}'s methods are {', '.join(sorted(methods))}"
    if node.parameters is None:
        if isinstance(target, _Value):
            return target._property(name)
        if name in methods:
            recorder.note("unresolved", "a method without (): call it, e.g. .length()")
        else:
            recorder.refuse(node, f"{kind} has no property {name!r}; {allowed}")
        return None
    if name not in methods:
        recorder.refuse(
            node, f"{name!r} is not a method the template may call on {kind}; {allowed}"
        )
        return None
    if isinstance(target, _Value):
        method = getattr(target, name)
    else:
        method = functools.partial(_SCALARS[type(target)][1][name], target)
    args = [_data(a, recorder) for a in node.parameters.calculate(top_namespace, loader)]
    try:
        inspect.signature(method).bind(*args)
    except TypeError:
        raise TypeError(f"{name}() does not take {len(args)} argument(s)") from None
    try:
        return method(*args)
    except _BadIndex as exc:
        recorder.note("index", str(exc))
        return None


_UNDERSCORE = "{name!r}: names starting with _ are Python's, not the template's"
_ARITHMETIC = frozenset({"+", "-", "*", "/", "%"})
_LONG = 2**63  # the numbers a template computes stay within Java's long


class _OutOfRange(ArithmeticError):
    pass


def _operator(node: Any, recorder: _Recorder) -> None:
    """Arithmetic on numbers (and ``+`` on two texts) only: ``'%s' % $x`` is Python's
    formatting and ``'ab' * 9999999999`` Python's repetition, not Velocity's."""
    symbol = node.my_text().strip()
    if symbol not in _ARITHMETIC:
        return
    apply_to = node.apply_to

    def checked(a: Any, b: Any) -> Any:
        if _is_number(a) and _is_number(b):
            result = apply_to(a, b)
            if isinstance(result, int) and not -_LONG <= result < _LONG:
                raise _OutOfRange("a number the template computes is out of range")
            return result
        if symbol == "+" and isinstance(a, str) and isinstance(b, str):
            return _bounded(a + b)
        recorder.refuse(node, f"{symbol!r} takes two numbers{' or two texts' * (symbol == '+')}")
        return None

    node.apply_to = checked


class _TooManySteps(Exception):
    pass


class _Loop:
    """A #foreach collection as template data, each iteration counted against MAX_STEPS."""

    def __init__(self, items: _Map | _List | str, recorder: _Recorder) -> None:
        self._items = items
        self._recorder = recorder

    @classmethod
    def of(cls, collection: Any, recorder: _Recorder) -> Any:
        collection = _data(collection, recorder)
        if not isinstance(collection, _Map | _List | str):
            return collection  # None skips the loop; airspeed names anything else
        return cls(collection, recorder)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Any]:
        for item in self._items:
            self._recorder.step()
            yield item


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
    refused: bool = False


class _Recorder:
    """Collects problems; knows which reference is being evaluated and where it is."""

    def __init__(self, template: str) -> None:
        self._template = template
        self._stack: list[_Frame] = []
        self._found: dict[tuple[int, int, Kind, str], Problem] = {}
        self._offsets: dict[int, int] = {}
        self._roles: dict[int, str] = {}
        self._steps = 0

    def place(self, element: Any, offset: int, role: str | None = None) -> None:
        self._offsets[id(element)] = offset
        if role is not None:
            self._roles[id(element)] = role

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

    def role(self, element: Any) -> str | None:
        """How ``element`` is used: ``output``, ``collection`` or ``None`` (an expression)."""
        return self._roles.get(id(element))

    def step(self, cost: int = 1) -> None:
        """Count a loop iteration or a macro call; stop the render past :data:`MAX_STEPS`."""
        self._steps += cost
        if self._steps > MAX_STEPS:
            raise _TooManySteps

    def refuse(self, element: Any, message: str, reference: Any = None) -> None:
        """Report ``element`` (a name, a directive, an operator) as refused, at its position."""
        if reference is None and self._stack:
            reference = self._stack[-1].reference
            self._stack[-1].refused = True
        text = (reference or element).my_text().strip()
        line, column = self.position(element)
        shown = text if len(text) <= 80 else text[:79] + "…"
        self.add(Problem("refused", line, column, shown, f"{shown}: {message}"))

    def position(self, element: Any) -> tuple[int, int]:
        offset = self._offsets.get(id(element), getattr(element, "start", 0))
        # an operator's text starts with the spaces around it
        if type(element).__name__ == "BinaryOperator":
            text = element.my_text()
            offset += len(text) - len(text.lstrip())
        line = self._template.count("\n", 0, offset) + 1
        column = offset - (self._template.rfind("\n", 0, offset) + 1) + 1
        return line, column

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
        if value is not None or always or role == "expression" or frame.refused:
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
    """Wrap every reference of the parsed template so that its evaluation is recorded, and
    sandbox it: names resolved by :func:`_resolve`, refused parts reported and disarmed."""
    import airspeed

    element_type = airspeed._Element
    seen: set[int] = set()
    refused: set[int] = set()

    def wrap(reference: Any) -> None:
        expression = reference.expression
        if expression is None:
            return
        inner = expression.calculate
        shown = recorder.role(reference) == "output"

        def calculate(namespace: Any, loader: Any, global_namespace: Any = None) -> Any:
            recorder.enter(reference)
            value = None
            try:
                value = _data(inner(namespace, loader, global_namespace), recorder)
            finally:
                recorder.leave(value)
            if shown and isinstance(value, bool):
                return _java_text(value)  # Velocity prints true/false (#if still gets the bool)
            return value

        expression.calculate = calculate
        reference.calculate = calculate

    def disarm(node: Any, message: str, reference: Any = None) -> None:
        recorder.refuse(node, message, reference if reference is not None else node)
        node.evaluate_raw = lambda stream, namespace, loader: None

    def sandbox(node: Any, reference: Any) -> None:
        if isinstance(node, airspeed.FormalReference):
            wrap(node)
        elif isinstance(node, airspeed.NameOrCall):
            if node.name.startswith("_") and id(reference) not in refused:
                refused.add(id(reference))  # the first of $a.__b__.__c__ says it all
                recorder.refuse(node, _UNDERSCORE.format(name=node.name), reference or node)
            node.calculate = functools.partial(_resolve, node, recorder)
        elif isinstance(node, airspeed.SetDirective):
            if any(term.startswith("_") for term in node.terms):
                disarm(node, _UNDERSCORE.format(name=next(t for t in node.terms if t[0] == "_")))
            elif len(node.terms) > 1:
                disarm(node, "#set into an object or array would change the event's data")
        elif isinstance(node, airspeed.EvaluateDirective):
            disarm(node, "#evaluate renders text as a template the preview cannot check")
        elif isinstance(node, airspeed.IncludeDirective | airspeed.ParseDirective):
            disarm(node, "#include and #parse read files: the preview has only this template")
        elif isinstance(node, airspeed.UserDefinedDirective):
            disarm(node, "directives other than Velocity's own are not previewed")
        elif isinstance(node, airspeed.MacroCall):
            node.evaluate_raw = _counted(node.evaluate_raw, recorder)
        elif isinstance(node, airspeed.BinaryOperator):
            _operator(node, recorder)
        elif isinstance(node, airspeed.InterpolatedStringLiteral):
            block = node.block

            def interpolate(namespace: Any, loader: Any) -> str:
                stream = _LimitedStream()
                block.evaluate(stream, namespace, loader)
                return stream.getvalue()

            node.calculate = interpolate
        elif isinstance(node, airspeed.ForeachDirective):
            collection = node.value.calculate
            node.value.calculate = lambda namespace, loader: _Loop.of(
                collection(namespace, loader), recorder
            )

    def walk(node: Any, base: int, role: str | None, reference: Any) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        recorder.place(node, base + node.start, role)
        if isinstance(node, airspeed.FormalReference):
            reference = node
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
            walk(child, inner_base, child_role, reference)
        sandbox(node, reference)  # after the walk: it replaces the methods the walk follows

    walk(root, 0, None, None)


def _counted(evaluate: Callable[..., None], recorder: _Recorder) -> Callable[..., None]:
    def counted(stream: Any, namespace: Any, loader: Any) -> None:
        recorder.step(_MACRO_STEPS)
        evaluate(stream, namespace, loader)

    return counted


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
