"""The local Generate event receiver: platform rules, auth, scripted faults, history page."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from shop_events.testing import Receiver, Reply

from tests.support import VirtualTime

KEY = "test-key"


def event(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "eventTypeKey": "abandoned_cart",
        "keyValue": "ann@example.com",
        "params": [
            {"name": "email", "value": "ann@example.com"},
            {
                "name": "items",
                "value": json.dumps(
                    {
                        "array": [
                            {
                                "name": "Hair styler",
                                "price": "341",
                                "url": "http://127.0.0.1:5000/p/1",
                                "imageurl": "http://127.0.0.1:5000/img/1.svg",
                                "brand": "Le Petit Olivier",
                                "tags_weight": "200",
                                "tags_oldprice": "467",
                            },
                            {"name": "Magnolia Nobile", "price": "2341", "brand": "Acqua Di Parma"},
                        ]
                    }
                ),
            },
        ],
    }
    body.update(overrides)
    return body


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(api_key=KEY) as r:
        yield r


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.auth = ("any-user", KEY)
        yield s


def post(
    session: requests.Session, receiver: Receiver, body: Any, version: str = "v1"
) -> requests.Response:
    return session.post(f"{receiver.base_url}/{version}/event", json=body, timeout=5)


def test_valid_event_is_accepted_and_recorded(
    receiver: Receiver, session: requests.Session
) -> None:
    response = post(session, receiver, event())
    assert response.status_code == 200
    assert receiver.events == [event()]
    [received] = receiver.requests
    assert received.method == "POST"
    assert received.path == "/api/v1/event"
    assert received.status == 200
    assert received.json == event()
    assert json.loads(received.raw) == event()
    assert received.time.tzinfo is not None
    assert received.headers["Authorization"].startswith("Basic ")
    assert [i["name"] for i in Receiver.items(receiver.events[0])] == [
        "Hair styler",
        "Magnolia Nobile",
    ]


def test_base_url_and_port(receiver: Receiver) -> None:
    assert receiver.port > 0
    assert receiver.base_url == f"http://127.0.0.1:{receiver.port}/api"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"keyValue": "a@b.c"}, "eventTypeKey is required"),
        (event(eventTypeKey="x" * 101), "eventTypeKey is 101 characters long; the maximum is 100"),
        (event(eventTypeKey="cart/abandoned"), "forbidden characters: /"),
        (event(eventTypeKey="cart?,"), "forbidden characters: , ?"),
        (event(keyValue="k" * 301), "keyValue is 301 characters long; the maximum is 300"),
        (event(params={"email": "a@b.c"}), "params must be an array"),
        (event(params=[{"name": "email"}]), "params[0] must be an object with name and value"),
        (
            event(params=[{"name": "n" * 101, "value": "1"}]),
            "is 101 characters; the maximum is 100",
        ),
        (
            event(params=[{"name": "email", "value": "a"}, {"name": "email", "value": "b"}]),
            "Duplicate param name: 'email'",
        ),
        (
            event(params=[{"name": "items", "value": {"array": []}}]),
            "param 'items': value must be a string in v1",
        ),
        (
            {"eventTypeKey": "login", "params": [{"name": "city", "value": "Kyiv"}]},
            "The event should have the following params: [contactId, externalCustomerId, email, "
            "phone, pushToken]",
        ),
        ([event()], "the body must be a JSON object"),
    ],
)
def test_invalid_event_is_refused_with_reason(
    receiver: Receiver, session: requests.Session, body: Any, reason: str
) -> None:
    response = post(session, receiver, body)
    assert response.status_code == 400
    assert reason in response.text
    assert receiver.events == []
    assert receiver.requests[0].status == 400
    assert receiver.requests[0].reply == response.text


def test_key_value_may_be_replaced_by_a_contact_param(
    receiver: Receiver, session: requests.Session
) -> None:
    body = {"eventTypeKey": "login", "params": [{"name": "phone", "value": "380955547708"}]}
    assert post(session, receiver, body).status_code == 200


def test_body_that_is_not_json_is_refused(receiver: Receiver, session: requests.Session) -> None:
    response = session.post(
        f"{receiver.base_url}/v1/event",
        data=b"{not json",
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert response.status_code == 400
    assert "not valid UTF-8 JSON" in response.text
    assert receiver.requests[0].json is None
    assert receiver.requests[0].raw == b"{not json"


def test_wrong_content_type_is_refused(receiver: Receiver, session: requests.Session) -> None:
    response = session.post(
        f"{receiver.base_url}/v1/event",
        data=json.dumps(event()),
        timeout=5,
        headers={"Content-Type": "text/plain"},
    )
    assert response.status_code == 400
    assert "Content-Type must be application/json" in response.text


def test_body_over_20000_bytes_is_refused(receiver: Receiver, session: requests.Session) -> None:
    small = event(params=[{"name": "email", "value": "a@b.c"}, {"name": "pad", "value": ""}])
    room = 20_000 - len(json.dumps(small, separators=(",", ":")).encode())
    fits = event(params=[{"name": "email", "value": "a@b.c"}, {"name": "pad", "value": "x" * room}])
    too_big = event(
        params=[{"name": "email", "value": "a@b.c"}, {"name": "pad", "value": "x" * (room + 1)}]
    )

    def send(body: dict[str, Any]) -> requests.Response:
        return session.post(
            f"{receiver.base_url}/v1/event",
            data=json.dumps(body, separators=(",", ":")).encode(),
            headers={"Content-Type": "application/json; charset=UTF-8"},
            timeout=5,
        )

    assert send(fits).status_code == 200
    response = send(too_big)
    assert response.status_code == 400
    assert "20001 bytes; the maximum is 20000 bytes" in response.text


def test_v2_accepts_json_values(receiver: Receiver, session: requests.Session) -> None:
    items = {"array": [{"name": "Lamp", "price": "12.50", "tags_color": "red"}]}
    body = event(params=[{"name": "email", "value": "a@b.c"}, {"name": "items", "value": items}])
    assert post(session, receiver, body, "v2").status_code == 200
    assert receiver.requests[0].path == "/api/v2/event"
    assert Receiver.items(receiver.events[0]) == items["array"]


def test_auth(receiver: Receiver) -> None:
    url = f"{receiver.base_url}/v1/event"
    missing = requests.post(url, json=event(), timeout=5)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Basic")
    wrong = requests.post(url, json=event(), auth=("user", "nope"), timeout=5)
    assert wrong.status_code == 401
    assert "wrong API key" in wrong.text
    assert requests.post(url, json=event(), auth=("", KEY), timeout=5).status_code == 200
    bearer = requests.post(url, json=event(), headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    assert bearer.status_code == 200
    assert len(receiver.events) == 2

    receiver.api_key = "fixed"
    assert requests.post(url, json=event(), auth=("u", KEY), timeout=5).status_code == 401
    assert requests.post(url, json=event(), auth=("u", "fixed"), timeout=5).status_code == 200
    assert [r.status for r in receiver.requests] == [401, 401, 200, 200, 401, 200]


def test_no_key_accepts_anything() -> None:
    with Receiver() as r:
        assert requests.post(f"{r.base_url}/v1/event", json=event(), timeout=5).status_code == 200


def test_scripted_replies_come_first_and_in_order(
    receiver: Receiver, session: requests.Session
) -> None:
    receiver.script(
        Reply(status=503, body="maintenance", headers={"Retry-After": "120"}),
        Reply(status=429, body="too many", headers={"Retry-After": "3"}),
        Reply(status=400, body="The event should have the following params: [phone]"),
    )
    first = post(session, receiver, event())
    assert (first.status_code, first.text, first.headers["Retry-After"]) == (
        503,
        "maintenance",
        "120",
    )
    second = post(session, receiver, {"not": "even valid"})  # scripted before validation
    assert (second.status_code, second.headers["Retry-After"]) == (429, "3")
    third = post(session, receiver, event())
    assert (third.status_code, third.text) == (
        400,
        "The event should have the following params: [phone]",
    )
    assert post(session, receiver, event()).status_code == 200  # queue empty: normal again
    assert [r.status for r in receiver.requests] == [503, 429, 400, 200]
    assert len(receiver.events) == 1


def test_scripted_reply_precedes_auth() -> None:
    with Receiver(api_key="k") as r:
        r.script(Reply(status=200, body=""))
        assert requests.post(f"{r.base_url}/v1/event", json=event(), timeout=5).status_code == 200
        assert r.events == [event()]  # a scripted success counts as accepted
        assert requests.post(f"{r.base_url}/v1/event", json=event(), timeout=5).status_code == 401


def test_stop_cuts_a_scripted_delay_short() -> None:
    receiver = Receiver().start()
    receiver.script(Reply(status=200, delay=60))
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(requests.post(f"{receiver.base_url}/v1/event", json=event(), timeout=30))
        except requests.RequestException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    assert receiver.wait_for_arrivals(1)
    receiver.stop()
    thread.join(10)  # far less than the 60 s the reply was scripted to take
    assert not thread.is_alive()
    assert len(outcome) == 1


def test_hold_and_release(receiver: Receiver, session: requests.Session) -> None:
    receiver.hold()
    responses: list[requests.Response] = []
    thread = threading.Thread(target=lambda: responses.append(post(session, receiver, event())))
    thread.start()
    assert receiver.wait_for_arrivals(1)
    assert receiver.arrived == 1
    assert receiver.requests == []  # not answered while held
    receiver.release()
    thread.join(10)
    assert [r.status_code for r in responses] == [200]
    assert len(receiver.events) == 1


def test_stop_wakes_held_requests_without_accepting_them() -> None:
    receiver = Receiver().start()
    receiver.hold()
    outcome: list[object] = []

    def call() -> None:
        try:
            url = f"{receiver.base_url}/v1/event"
            outcome.append(requests.post(url, json=event(), timeout=30).status_code)
        except requests.RequestException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    assert receiver.wait_for_arrivals(1)
    receiver.stop()
    thread.join(10)  # held requests wait for release(), however long: stop() woke it
    assert not thread.is_alive()
    assert receiver.events == []
    assert outcome and outcome[0] != 200


def test_latency_delays_every_answer(receiver: Receiver, session: requests.Session) -> None:
    receiver.latency = 60.0
    outcome: list[int] = []
    thread = threading.Thread(target=lambda: outcome.append(post(session, receiver, event())))
    thread.start()
    assert receiver.wait_for_arrivals(1)
    thread.join(0.5)  # a bound on how long to look, not a measurement
    assert thread.is_alive()
    assert receiver.requests == []  # arrived, not answered
    receiver.stop()  # cuts the latency short, as it cuts scripted delays
    thread.join(10)
    assert [r.status for r in receiver.requests] == [503]
    assert receiver.events == []


def test_rate_limit_is_a_token_bucket_answering_429_retry_after_1(
    receiver: Receiver, session: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = VirtualTime(1024.0, frozen=True)
    monkeypatch.setattr(sys.modules[Receiver.__module__], "time", SimpleNamespace(monotonic=clock))
    receiver.rate_limit = 5.0
    burst = [post(session, receiver, event()) for _ in range(8)]
    assert [r.status_code for r in burst] == [200] * 5 + [429] * 3
    assert all(r.headers["Retry-After"] == "1" for r in burst[5:])
    assert len(receiver.events) == 5
    clock.advance(0.125)  # a token comes back every 0.2 s
    assert post(session, receiver, event()).status_code == 429
    clock.advance(0.125)
    assert post(session, receiver, event()).status_code == 200
    assert post(session, receiver, event()).status_code == 429
    clock.advance(10.0)  # a full bucket holds one second's worth, no more
    assert [post(session, receiver, event()).status_code for _ in range(6)] == [200] * 5 + [429]
    receiver.rate_limit = None
    assert all(post(session, receiver, event()).ok for _ in range(10))
    assert len(receiver.events) == 5 + 1 + 5 + 10
    assert all(r.arrived is not None and r.arrived <= r.time for r in receiver.requests)


def test_requests_after_stop_fail() -> None:
    receiver = Receiver().start()
    with requests.Session() as s:
        assert s.post(f"{receiver.base_url}/v1/event", json=event(), timeout=5).status_code == 200
        receiver.stop()
        with pytest.raises(requests.ConnectionError):
            s.post(f"{receiver.base_url}/v1/event", json=event(), timeout=5)


def test_orders_are_recorded(receiver: Receiver, session: requests.Session) -> None:
    url = f"{receiver.base_url}/v1/orders"
    order = {"externalOrderId": "order-9", "status": "INITIALIZED", "totalCost": 682}
    assert session.post(url, json={"orders": [order]}, timeout=5).status_code == 200
    assert receiver.orders == [order]
    bad = session.post(url, json={"orders": [{"status": "NEW"}]}, timeout=5)
    assert (bad.status_code, bad.text) == (400, "orders[0].externalOrderId is required")
    assert receiver.events == []


def test_past_events_are_recorded_and_checked_like_events_with_their_time(
    receiver: Receiver, session: requests.Session
) -> None:
    url = f"{receiver.base_url}/v1/past_events"
    past = event(occurred="2023-03-22T14:30")
    assert session.post(url, json={"events": [past]}, timeout=5).status_code == 200
    assert receiver.past_events == [past] and receiver.events == []
    refused = [
        ({"events": [event()]}, "events[0].occurred must be a time like 2023-03-22T14:30"),
        ({"events": [event(occurred="22.03.2023")]}, "events[0].occurred must be a time"),
        ({"events": [event(eventTypeKey="a/b", occurred="2023-03-22T14:30")]}, "events[0]: "),
        ({"events": [past] * 501}, "501 events in one request; the maximum is 500"),
        ({"events": []}, "events must be a non-empty array"),
    ]
    for body, reason in refused:
        answer = session.post(url, json=body, timeout=5)
        assert answer.status_code == 400 and answer.text.startswith(reason), answer.text
    assert len(receiver.past_events) == 1


def test_unknown_paths_are_recorded_as_404(receiver: Receiver, session: requests.Session) -> None:
    assert session.post(f"{receiver.base_url}/v1/evnt", json=event(), timeout=5).status_code == 404
    assert post(session, receiver, event(), "v3").status_code == 404
    assert [r.status for r in receiver.requests] == [404, 404]


def test_clear(receiver: Receiver, session: requests.Session) -> None:
    post(session, receiver, event())
    receiver.script(Reply(500))
    receiver.clear()
    assert (receiver.requests, receiver.events, receiver.arrived) == ([], [], 0)
    assert post(session, receiver, event()).status_code == 200


def test_history_page_shows_events_newest_first_with_items_table(
    receiver: Receiver, session: requests.Session
) -> None:
    post(session, receiver, event())
    v2_items = {"array": [{"name": "Desk lamp", "price": "12.50", "tags_color": "red"}]}
    second = event(
        eventTypeKey="order_created",
        keyValue="bob@example.com",
        params=[
            {"name": "email", "value": "bob@example.com"},
            {"name": "items", "value": v2_items},
        ],
    )
    post(session, receiver, second, "v2")

    page = requests.get(f"http://127.0.0.1:{receiver.port}/", timeout=5)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    html = page.text
    assert html.index("order_created") < html.index("abandoned_cart")  # newest first
    assert "bob@example.com" in html and "ann@example.com" in html
    for header in (
        "<th>name</th>",
        "<th>price</th>",
        "<th>imageurl</th>",
        "<th>tags_weight</th>",
        "<th>tags_oldprice</th>",
        "<th>tags_color</th>",
    ):
        assert header in html
    assert '<img src="http://127.0.0.1:5000/img/1.svg"' in html
    assert "Magnolia Nobile" in html and "Desk lamp" in html
    assert "&#34;eventTypeKey&#34;: &#34;abandoned_cart&#34;" in html  # the body, pretty-printed
    assert KEY not in html

    listed = requests.get(f"http://127.0.0.1:{receiver.port}/events.json", timeout=5).json()
    assert listed == [event(), second]


def test_history_page_escapes_product_fields(receiver: Receiver, session: requests.Session) -> None:
    evil = {
        "array": [
            {
                "name": "<script>alert(1)</script>",
                "price": "1",
                "imageurl": "javascript:alert(2)",
                "url": '"><b>x</b>',
            }
        ]
    }
    body = event(
        eventTypeKey="abandoned_cart",
        params=[
            {"name": "email", "value": "<i>a</i>"},
            {"name": "items", "value": json.dumps(evil)},
        ],
    )
    assert post(session, receiver, body).status_code == 200
    html = requests.get(f"http://127.0.0.1:{receiver.port}/", timeout=5).text
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert '<img src="javascript:' not in html  # only http(s) images are rendered
    assert "<b>x</b>" not in html and "<i>a</i>" not in html


def test_empty_history_page() -> None:
    with Receiver() as r:
        assert "No events yet" in requests.get(f"http://127.0.0.1:{r.port}/", timeout=5).text
