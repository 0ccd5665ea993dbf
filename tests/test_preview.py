"""Template preview: the platform's email block rendered with airspeed, and each kind of report."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from shop_events import Item, Settings, ShopEvents, Tracker
from shop_events.cli import cli
from shop_events.preview import PreviewError, Problem, load_body, render
from shop_events.storage.tables import outbox
from sqlalchemy import select

SEED = Path(__file__).parent / "data" / "seed_generate_event.txt"


def seed_body() -> dict[str, object]:
    """The seed's abandoned cart example: ``items`` a JSON string (v1) with two products."""
    text = SEED.read_text(encoding="utf-8")
    match = re.search(r'"value": "(\{\\"array\\".*?\]\})"', text)
    assert match, "the seed's items example was not found"
    items = json.loads(f'"{match.group(1)}"')
    return {
        "eventTypeKey": "abandoned_cart",
        "keyValue": "site@en.net",
        "params": [{"name": "email", "value": "site@en.net"}, {"name": "items", "value": items}],
    }


LOOP = """<h1>Your cart, $email</h1>
#foreach($item in $data.get('array'))
<p>$velocityCount. $!item.get('name') — $!item.get('price')</p>
<img src="$!item.get('imageurl')">
#end
"""


def kinds(problems: tuple[Problem, ...]) -> list[str]:
    return [p.kind for p in problems]


def test_the_seeds_loop_renders_without_problems() -> None:
    result = render(LOOP, seed_body())
    assert result.ok, result.problems
    assert "<h1>Your cart, site@en.net</h1>" in result.output
    assert "<p>1. Hair styler — 341</p>" in result.output
    assert "<p>2. Magnolia Nobile — 2341</p>" in result.output
    assert '<img src="https://site.com/uploads/product/big/20161122/20161122_7zvb.jpg">' in (
        result.output
    )


def test_items_is_iterable_and_indexable_too() -> None:
    template = (
        "#foreach($item in $items)$item.name;#end"
        "|$items.size()|$items.get(1).get('brand')|$items.array[0].price"
        "|$items.get('array').size()|$data.get('items').get(0).name"
    )
    result = render(template, seed_body())
    assert result.ok, result.problems
    assert result.output == ("Hair styler;Magnolia Nobile;|2|Acqua Di Parma|341|2|Hair styler")


def test_v2_bodies_with_real_json_render_the_same() -> None:
    body = seed_body()
    params = body["params"]
    assert isinstance(params, list)
    params[1]["value"] = json.loads(params[1]["value"])
    result = render(LOOP, body)
    assert result.ok and "<p>2. Magnolia Nobile — 2341</p>" in result.output


def test_reference_to_nothing_is_reported_with_its_line() -> None:
    template = (
        "Hi $!data.get('firstName')\n"
        "#foreach($item in $data.get('array'))\n"
        "$!item.get('colour') $item.size\n"
        "#end\n"
        "$missing\n"
    )
    result = render(template, seed_body())
    assert kinds(result.problems) == ["unresolved"] * 4
    first, colour, size, missing = result.problems
    assert (first.line, first.column) == (1, 4)
    assert "data has no 'firstName'" in first.message and "renders empty" in first.message
    assert colour.line == 3 and colour.reference == "$!item.get('colour')"
    assert "has no 'colour' (it has: name, price, url, imageurl, brand" in colour.message
    assert size.reference == "$item.size" and "renders as its own text" in size.message
    assert (missing.line, missing.column) == (5, 1)
    assert "there is no $missing (there are $email, $items, $data)" in missing.message
    assert "$missing" in result.output  # as Velocity renders an unknown non-quiet reference


def test_case_mismatch_is_reported_as_the_seeds_example() -> None:
    template = (
        "#foreach($item in $data.get('array'))\n"
        "<img src=\"$!item.get('ImageUrl')\"> $item.Name\n"
        "#end\n"
        "$Email"
    )
    result = render(template, seed_body())
    assert kinds(result.problems) == ["case", "case", "case"]
    image, name, email = result.problems
    assert "'Name' is not in items.array[0], 'name' is" in name.message
    assert (image.line, image.column) == (2, 11)
    assert "'ImageUrl' is not in items.array[0], 'imageurl' is" in image.message
    assert "case-sensitive" in image.message
    assert "there is no $Email, $email is" in email.message
    assert '<img src="">' in result.output


def test_case_mismatch_in_a_condition_is_reported_too() -> None:
    template = "#foreach($item in $items)#if($item.get('Brand'))$item.get('brand')#end#end"
    result = render(template, seed_body())
    assert kinds(result.problems) == ["case"]
    assert "'brand' is" in result.problems[0].message


def test_missing_field_in_a_condition_is_not_a_problem() -> None:
    result = render(
        "#foreach($i in $items)#if($i.get('sale'))SALE#end#end$!{nope|'x'}", seed_body()
    )
    assert result.ok, result.problems


def test_index_past_the_end_is_reported() -> None:
    template = (
        "$!data.get('array').get(0).get('name')\n"
        "$!data.get('array').get(5).get('name')\n"
        "$items.array[2]\n"
        "$!items.get(-1)\n"
    )
    result = render(template, seed_body())
    assert kinds(result.problems) == ["index", "index", "index"]
    get5, bracket2, minus1 = result.problems
    assert get5.line == 2 and "index 5 is past the end of items.array: it has 2" in get5.message
    assert "the last index is 1" in get5.message and "fails the send" in get5.message
    assert bracket2.line == 3 and "index 2 is past the end" in bracket2.message
    assert minus1.line == 4 and "index -1 is outside" in minus1.message
    assert result.output.startswith("Hair styler\n")


def test_syntax_errors_with_line_numbers() -> None:
    unclosed = render("<p>hi</p>\n#foreach($item in $items)\n$item.name\n", seed_body())
    (problem,) = unclosed.problems
    assert problem.kind == "syntax" and problem.line == 4
    assert "expected #end" in problem.message and "the #foreach on line 2 is not closed" in (
        problem.message
    )
    assert unclosed.output == ""
    paren = render("ok\n#if($email == 'x'\nyes#end", seed_body())
    (problem,) = paren.problems
    assert (problem.kind, problem.line, problem.column) == ("syntax", 2, 18)
    assert "expected )" in problem.message
    assert str(problem).startswith("line 2, column 18: syntax: ")


def test_failures_while_rendering_are_reported() -> None:
    result = render("a\n#foreach($i in $items)$i.get('name')#end\n#nosuchmacro()\n", seed_body())
    assert kinds(result.problems) == ["error"]
    assert result.problems[0].line == 3 and "no such macro" in result.problems[0].message


def test_items_that_are_not_json_and_a_missing_param() -> None:
    body = {"params": [{"name": "items", "value": "{not json"}]}
    result = render("x", body)
    assert kinds(result.problems) == ["json"] and "Wrong Format" in result.problems[0].message
    result = render("x", {"params": [{"name": "email", "value": "a@b.c"}]})
    assert "no items param" in result.problems[0].message
    custom = render(
        "$!data.get('array').size()",
        {"params": [{"name": "goods", "value": '{"array": [1]}'}]},
        "goods",
    )
    assert custom.ok and custom.output == "1"


def test_load_body_checks_the_shape() -> None:
    assert load_body(json.dumps(seed_body()))["keyValue"] == "site@en.net"
    for text, why in (("[1]", "JSON object"), ("{", "not valid JSON"), ('{"params": 3}', "params")):
        with pytest.raises(PreviewError, match=why):
            load_body(text)


# ------------------------------------------------------------------------------ command


def test_command_with_an_event_file(tmp_path: Path) -> None:
    template = tmp_path / "email.vm"
    template.write_text(LOOP.replace("'imageurl'", "'ImageUrl'"), encoding="utf-8")
    event = tmp_path / "body.json"
    event.write_text(json.dumps(seed_body()), encoding="utf-8")
    result = CliRunner().invoke(
        cli, ["preview", "--template", str(template), "--event-file", str(event)]
    )
    assert result.exit_code == 1
    assert "<p>1. Hair styler — 341</p>" in result.stdout
    assert f"{template}:4:11: case: " in result.stderr
    assert "1 problem found" in result.stderr
    template.write_text(LOOP, encoding="utf-8")
    out = tmp_path / "out.html"
    result = CliRunner().invoke(
        cli,
        ["preview", "--template", str(template), "--event-file", str(event), "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "Magnolia Nobile" in out.read_text(encoding="utf-8") and result.stdout == ""


def test_command_with_an_event_from_the_outbox(
    tracker: Tracker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = tracker.custom_event(
        "abandoned_cart",
        key_value="ann@example.com",
        params={"email": "ann@example.com", "items": {"array": [{"name": "Comb", "price": "5"}]}},
    )
    tracker.cart_updated("c", email="ann@example.com", items=[Item(name="x", price="1")])
    with tracker.engine.connect() as conn:
        event_id = conn.execute(select(outbox.c.id).where(outbox.c.dedupe_key == key)).scalar()
    config = tmp_path / "config.toml"
    config.write_text(f'[database]\nurl = "{tracker.settings.database.url}"\n', encoding="utf-8")
    template = tmp_path / "email.vm"
    template.write_text("$!data.get('array').get(0).get('name')", encoding="utf-8")
    runner = CliRunner()
    args = ["--config", str(config), "preview", "--template", str(template)]
    result = runner.invoke(cli, [*args, "--event", str(event_id)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "Comb"
    result = runner.invoke(cli, [*args, "--event", "424242"])
    assert result.exit_code == 1 and "no event 424242" in result.output
    result = runner.invoke(cli, args)
    assert result.exit_code == 2 and "--event ID or --event-file" in result.output


def test_runaway_output_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import shop_events.preview

    monkeypatch.setattr(shop_events.preview, "MAX_OUTPUT", 1000)
    result = render("#foreach($i in [1..100000])$i,#end", seed_body())
    assert kinds(result.problems) == ["error"] and "over 1000 characters" in str(result.problems)
    assert len(result.output) <= 1000


# ------------------------------------------------------------------------------ sandbox

API_SECRET = "sk-live-preview-7c1e9d"
FLASK_SECRET = "flask-secret-preview-41ab"
ENV_SECRET = "env-secret-preview-93f0"
SYS = "$data.__class__.__init__.__globals__.get('dataclasses').sys"
"""A walk from the template's data to the interpreter's ``sys`` module."""
FORMAT_SYS = "{0.__class__.__init__.__globals__[dataclasses].sys}"
"""The same walk written for ``str.format``."""


@pytest.fixture
def hostile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Flask, Tracker, Path]]:
    """A web process with secrets within reach of Python: an API key, a Flask secret key and
    an environment variable; an application context is active, as on the event page."""
    monkeypatch.setenv("PREVIEW_TEST_SECRET", ENV_SECRET)
    settings = Settings.load(
        {
            "api": {"base_url": "http://127.0.0.1:9", "key": API_SECRET},
            "database": {"url": f"sqlite:///{tmp_path / 'shop_events.db'}"},
            "scheduler": {"enabled": False},
        }
    )
    tracker = Tracker(settings)
    tracker.migrate()
    app = Flask("shop")
    app.secret_key = FLASK_SECRET
    ShopEvents(app, tracker=tracker, admin_access=lambda: True)
    try:
        with app.app_context():
            yield app, tracker, tmp_path / "marker"
    finally:
        tracker.shutdown()
        tracker.engine.dispose()


def attacks(marker: Path) -> list[tuple[str, str]]:
    """Templates that reach for Python, each with the part the preview must refuse."""
    environ = "modules.get('os').environ"
    flask_app = "modules.get('flask').current_app"
    return [
        ("$data.__class__.__mro__", "__class__"),
        ("$data.__class__.__init__.__globals__", "__class__"),
        ("${data.__class__.__init__.__globals__}", "__class__"),
        ("$items.get(0).__class__", "__class__"),
        ("$items.get(0).get('name').__class__.__base__.__subclasses__()", "__class__"),
        ("$email.__class__", "__class__"),
        ("$email.format($data)", "format"),
        ("$email.getClass()", "getClass"),
        ("$data.getClass().forName('java.lang.Runtime')", "getClass"),
        ("$items.getClass()", "getClass"),
        (f"#set($f = '{FORMAT_SYS}')$f.format($data)", "format"),
        (f'#set($f = "{FORMAT_SYS}")$f.format($data)', "format"),
        ('#set($x = "a")$x.format($data)', "format"),
        ("#set($x = 'a')$x.__class__", "__class__"),
        ("#set($n = 7)$n.__class__.__subclasses__()", "__class__"),
        ("#set($n = 7)$n.bit_length()", "bit_length"),
        ("#set($l = [1, 2])$l.append($data)", "append"),
        ("#set($l = [1, 2])$l.__class__", "__class__"),
        ("#set($d = {'a': 1})$d.update({'b': 2})$d.keys()", "update"),
        ("#set($r = [1..3])$r.__class__", "__class__"),
        ("#foreach($i in [1..2])$foreach.__class__ $velocityCount.__class__#end", "__class__"),
        ("#define($block)x#end$block.__class__", "__class__"),
        ("#macro(show $a)$a.__class__#end#show($data)", "__class__"),
        (f"{SYS}.{environ}.get('PREVIEW_TEST_SECRET')", "__class__"),
        (f"{SYS}.{flask_app}.secret_key", "__class__"),
        (
            f"{SYS}.{flask_app}.extensions.get('shop_events').settings.api.key.reveal()",
            "__class__",
        ),
        (
            f"#set($f = '{FORMAT_SYS[:-1]}.modules[os].environ[PREVIEW_TEST_SECRET]}}')"
            "$f.format($data)",
            "format",
        ),
        (
            f"#set($f = '{FORMAT_SYS[:-1]}.modules[flask].current_app.secret_key}}')"
            "$f.format($data)",
            "format",
        ),
        (f"{SYS}.modules.get('os').system('touch {marker}')", "__class__"),
        (f"{SYS}.modules.get('builtins').open('{marker}', 'w').write('x')", "__class__"),
        (f"#set($o = {SYS}.modules.get('os'))$o.system('touch {marker}')", "__class__"),
        (f"$__builtins__.open('{marker}', 'w')", "__builtins__"),
        ("#set($data.__class__ = 1)", "#set"),
        ("#evaluate('$data.__class__')", "#evaluate"),
        ("#include('/etc/passwd')", "#include"),
        ("#parse('/etc/passwd')", "#parse"),
        ("#set($s = '%s' % $data)$s", "% $data"),
        ("#set($s = 'ab' * 1000000000)$s", "* 1"),
    ]


def assert_nothing_escaped(result: Any, marker: Path) -> None:
    shown = result.output + "\n".join(str(p) for p in result.problems)
    for secret in (API_SECRET, FLASK_SECRET, ENV_SECRET):
        assert secret not in shown
    for leak in ("<class", "<module", "mappingproxy", "__builtins__': ", "ModuleSpec"):
        assert leak not in result.output
    assert not marker.exists(), "the template wrote a file or ran a command"


def position(template: str, text: str) -> tuple[int, int]:
    offset = template.index(text)
    return template.count("\n", 0, offset) + 1, offset - (template.rfind("\n", 0, offset) + 1) + 1


def test_a_template_cannot_reach_python(hostile: tuple[Flask, Tracker, Path]) -> None:
    """Every reach for Python is refused where it is written; nothing runs, nothing leaks."""
    _, _, marker = hostile
    for attack, refused_at in attacks(marker):
        template = f"<p>Hello</p>\n  {attack}\n"
        result = render(template, seed_body())
        assert_nothing_escaped(result, marker)
        refused = [p for p in result.problems if p.kind == "refused"]
        assert refused, (attack, result.problems)
        line, column = position(template, refused_at)
        assert (refused[0].line, refused[0].column) == (line, column), (attack, refused)
        assert str(refused[0]).startswith(f"line {line}, column {column}: refused: ")


def test_event_data_cannot_smuggle_a_format_walk(hostile: tuple[Flask, Tracker, Path]) -> None:
    """The event's own text is data: a format string in a param is never interpreted."""
    _, _, marker = hostile
    body = seed_body()
    params = body["params"]
    assert isinstance(params, list)
    params[0]["value"] = FORMAT_SYS[:-1] + ".modules[flask].current_app.secret_key}"
    result = render("$email\n$email.format($data)", body)
    assert_nothing_escaped(result, marker)
    assert result.output.startswith(FORMAT_SYS[:-1])
    assert [(p.kind, p.line, p.column) for p in result.problems] == [("refused", 2, 8)]


def test_names_that_do_not_exist_are_unresolved_not_run(
    hostile: tuple[Flask, Tracker, Path],
) -> None:
    _, _, marker = hostile
    template = f"$os.system('touch {marker}')\n$sys.modules\n$open('{marker}', 'w')\n"
    result = render(template, seed_body())
    assert_nothing_escaped(result, marker)
    assert [(p.kind, p.line, p.column) for p in result.problems] == [
        ("unresolved", 1, 1),
        ("unresolved", 2, 1),
        ("unresolved", 3, 1),
    ]


def test_refusals_in_branches_not_taken_are_reported_too() -> None:
    result = render("#if(false)\n  $data.__class__\n#end", seed_body())
    assert [(p.kind, p.line, p.column) for p in result.problems] == [("refused", 2, 9)]
    assert "names starting with _" in result.problems[0].message


def test_the_java_methods_a_template_may_call() -> None:
    template = (
        "$email.length() $email.toUpperCase() $email.substring(0, 4) $email.indexOf('@') "
        "$email.contains('en') $email.startsWith('site') $email.endsWith('.net') "
        "$email.replace('.net', '.org') $email.trim().isEmpty() $email.equals('site@en.net') "
        "$email.charAt(0) $email.concat('!') $email.toString()|"
        "$data.size() $data.containsKey('email') $data.keySet().size() $data.isEmpty() "
        "$items.size() $items.get(0).keySet().contains('brand') $items.array.indexOf(1) "
        "#foreach($e in $items.get(1).entrySet())#if($e.key == 'price')$e.getValue()#end#end|"
        "#foreach($i in [3..1])$i.toString()$foreach.count$velocityHasNext.toString(),#end "
        "#set($n = 2 + 3 * 4)$n.intValue() #set($s = 'a' + 'b')$s.toUpperCase() "
        "#set($l = [1, 2])$l.size() $l #set($m = {'k': 'v'})$m.k $m"
    )
    result = render(template, seed_body())
    assert result.ok, result.problems
    first, second, third = result.output.split("|")
    assert first == (
        "11 SITE@EN.NET site 4 true true true site@en.org false true s site@en.net! site@en.net"
    )
    assert second == "3 true 3 false 2 true -1 2341"
    assert third == "31true,22true,13false, 14 AB 2 [1, 2] v {k=v}"


def test_a_method_off_the_list_is_refused_and_not_called() -> None:
    template = "$data.get('email').upper() $items.pop() $data.clear() $data.size()"
    result = render(template, seed_body())
    assert [(p.kind, p.column) for p in result.problems] == [
        ("refused", position(template, name)[1]) for name in ("upper", "pop", "clear")
    ]
    assert result.output.endswith(" 3"), result.output  # clear() did not run
    assert "'upper' is not a method the template may call on a text" in str(result.problems)


def test_runaway_loops_and_growing_text_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    import shop_events.preview

    monkeypatch.setattr(shop_events.preview, "MAX_STEPS", 1000)
    monkeypatch.setattr(shop_events.preview, "MAX_OUTPUT", 1000)
    loop = render("#foreach($i in [1..100000000])#foreach($j in [1..100000000])#end#end", {})
    assert "error" in kinds(loop.problems) and "more than 1000 steps" in str(loop.problems)
    fan_out = "#macro(m $n)#if($n > 0)#set($k = $n - 1)#m($k)#set($k = $n - 1)#m($k)#end#end#m(40)"
    assert "more than 1000 steps" in str(render(fan_out, {}).problems)
    text = render("#set($s = 'ab')#foreach($i in [1..30])#set($s = \"$s$s\")#end", {})
    assert "over 1000 characters" in str(text.problems)
    number = render("#set($n = 10)#foreach($i in [1..30])#set($n = $n * $n)#end$n", {})
    assert "out of range" in str(number.problems)


def test_command_refuses_a_template_that_reaches_for_python(
    hostile: tuple[Flask, Tracker, Path],
) -> None:
    _, _, marker = hostile
    template = marker.parent / "email.vm"
    text = (
        f"Hi $email\n{SYS}.modules.get('os').system('touch {marker}')\n"
        f"#set($f = '{FORMAT_SYS[:-1]}.modules[flask].current_app.secret_key}}')$f.format($data)\n"
    )
    template.write_text(text, encoding="utf-8")
    event = marker.parent / "body.json"
    event.write_text(json.dumps(seed_body()), encoding="utf-8")
    result = CliRunner().invoke(
        cli, ["preview", "--template", str(template), "--event-file", str(event)]
    )
    assert result.exit_code == 1
    assert not marker.exists()
    assert FLASK_SECRET not in result.output and "<class" not in result.stdout
    assert f"{template}:2:7: refused: " in result.stderr
    line, column = position(text, "format($data)")
    assert f"{template}:{line}:{column}: refused: " in result.stderr


def test_event_page_refuses_a_template_that_reaches_for_python(
    hostile: tuple[Flask, Tracker, Path],
) -> None:
    app, tracker, marker = hostile
    key = tracker.custom_event(
        "abandoned_cart",
        key_value="ann@example.com",
        params={"email": "ann@example.com", "items": {"array": [{"name": "Comb"}]}},
    )
    with tracker.engine.connect() as conn:
        event_id = conn.execute(select(outbox.c.id).where(outbox.c.dedupe_key == key)).scalar()
    client = app.test_client()
    admin = "/shop-events/admin/"
    html = client.get(f"{admin}events/{event_id}").data.decode()
    token = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert token is not None
    template = (
        f"{SYS}.modules.get('flask').current_app.secret_key\n"
        f"{SYS}.modules.get('flask').current_app.extensions.get('shop_events')"
        ".settings.api.key.reveal()\n"
        f"#set($f = '{FORMAT_SYS[:-1]}.modules[flask].current_app.secret_key}}')$f.format($data)\n"
        f"{SYS}.modules.get('os').system('touch {marker}')\n"
    )
    response = client.post(
        f"{admin}events/{event_id}/preview",
        data={"csrf_token": token.group(1), "template": template},
    )
    assert response.status_code == 200
    shown = response.data.decode()
    assert FLASK_SECRET not in shown and API_SECRET not in shown
    assert "&lt;class" not in shown and not marker.exists()
    rows = re.findall(
        r'<tr class="problem-refused"><td class="num">(\d+)</td><td class="num">(\d+)</td>', shown
    )
    assert [int(line) for line, _ in rows] == [1, 2, 3, 4]


def test_every_place_a_reference_can_stand_is_sandboxed() -> None:
    """One reach for Python in each position of airspeed's grammar, each refused on its line."""
    places = [
        "$data.__class__",
        "${data.__class__}",
        "$!data.__class__",
        "#if($data.__class__)#end",
        "#if(false)#elseif($data.__class__)#end",
        "#if(false)#else$data.__class__#end",
        "#if(!$data.__class__)#end",
        "#if(($data.__class__ == 1) && true)#end",
        "#set($x = $data.__class__)",
        "#set($x = [$data.__class__, 1])",
        "#set($x = {'k': $data.__class__})",
        "#set($x = {$data.__class__: 1})",
        "#set($x = [1..$data.__class__])",
        "#foreach($i in $data.__class__)#end",
        "#foreach($i in [1])$data.__class__#end",
        "$data.get($data.__class__)",
        "$items.array[$data.__class__]",
        "${nothing|$data.__class__}",
        '#set($x = "a $data.__class__ b")',
        "#macro(m $a)$a#end#m($data.__class__)",
        "#macro(n)$data.__class__#end#n()",
        "#define($d)$data.__class__#end$d",
    ]
    template = "\n".join(places) + "\n"
    result = render(template, seed_body())
    refused = [p for p in result.problems if p.kind == "refused"]
    assert sorted({p.line for p in refused}) == list(range(1, len(places) + 1)), refused
    assert "<class" not in result.output and "__main__" not in result.output
