"""Template preview: the platform's email block rendered with airspeed, and each kind of report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from shop_events import Item, Tracker
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
