"""Errors that quote hostile input stay short: escapes and validators' own lists of bad
characters never blow a message past what a log line or a page can show."""

from __future__ import annotations

import pytest
from shop_events import ValidationError
from shop_events.payload.validation import check_email, check_url, quoted

ASTRAL = "\U000101fe\U00010bb0\U00014647\U00018cd6\U0002ebe1"
CONTROL = "\x1f\x08\x7f"


def test_a_quoted_text_is_cut_after_its_escapes_not_before() -> None:
    text = (ASTRAL + CONTROL) * 40
    shown = quoted(text, 80)
    assert len(shown) <= 83 and shown.endswith("…")
    assert quoted("plain", 80) == "'plain'"


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (check_url, ASTRAL * 20),
        (check_email, "0" * 60 + "".join(map(chr, range(1, 32))) + "\u0300" + ASTRAL + "<"),
    ],
)
def test_a_refusal_of_hostile_text_names_the_field_in_a_short_message(
    check: object, value: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        check(value, "field")  # type: ignore[operator]
    assert caught.value.field == "field"
    assert len(str(caught.value)) <= 300
