"""The ``shop-events`` command: CliRunner for each command, and a real worker process."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from freezegun import freeze_time
from shop_events import Item, Settings, Tracker
from shop_events.cli import cli
from shop_events.storage import pause
from shop_events.storage.enums import OutboxStatus
from shop_events.storage.migrate import head_revision
from shop_events.storage.tables import outbox
from shop_events.testing import Receiver, Reply
from sqlalchemy import select

REPO = Path(__file__).resolve().parent.parent
WORKER_TIMEOUT = 60.0
WRONG_KEY = "wrong-key-7c1e9a"


def write_config(
    path: Path,
    receiver: Receiver,
    key: str | None = None,
    extra: str = "",
    scheduler: str = "enabled = false",
) -> Path:
    path.write_text(
        f"""
[api]
base_url = "{receiver.base_url}"
key = "{receiver.api_key if key is None else key}"

[database]
url = "sqlite:///events.db"

[scheduler]
{scheduler}

[delivery]
threads = 2
{extra}
""",
        encoding="utf-8",
    )
    return path


pytestmark = pytest.mark.usefixtures("no_shop_events_environment")


@pytest.fixture
def config(tmp_path: Path, receiver: Receiver) -> Path:
    return write_config(tmp_path / "shop.toml", receiver)


Invoke = Callable[..., Result]


@pytest.fixture
def invoke(config: Path) -> Invoke:
    runner = CliRunner()

    def run(*args: str, config_file: Path = config) -> Result:
        return runner.invoke(cli, ["--config", str(config_file), *args], catch_exceptions=False)

    return run


@pytest.fixture
def migrated(invoke: Invoke) -> None:
    result = invoke("migrate")
    assert result.exit_code == 0, result.output


@pytest.fixture
def tracker_at(config: Path) -> Iterator[Callable[[datetime], Tracker]]:
    """Trackers on the config's database whose clock stands at a given time."""
    made: list[Tracker] = []

    def make(when: datetime) -> Tracker:
        tracker = Tracker(Settings.from_file(config, env={}), clock=lambda: when)
        made.append(tracker)
        return tracker

    yield make
    for tracker in made:
        tracker.shutdown()
        tracker.engine.dispose()


def status_json(invoke: Invoke) -> dict[str, object]:
    result = invoke("status", "--json")
    assert result.exit_code == 0, result.output
    report: dict[str, object] = json.loads(result.stdout)
    return report


def basic_password(receiver: Receiver, index: int = -1) -> str:
    header = receiver.requests[index].headers["Authorization"]
    scheme, _, encoded = header.partition(" ")
    assert scheme == "Basic"
    return base64.b64decode(encoded).decode().partition(":")[2]


# --------------------------------------------------------------------------------- migrate


def test_migrate_creates_the_database_next_to_the_config(
    invoke: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = invoke("migrate")
    assert result.exit_code == 0, result.output
    assert f"database at revision {head_revision()}" in result.output
    assert (tmp_path / "events.db").is_file()
    assert not (elsewhere / "events.db").exists()
    again = invoke("migrate")  # idempotent
    assert again.exit_code == 0


def test_config_error_is_reported_with_the_key(tmp_path: Path, receiver: Receiver) -> None:
    bad = write_config(tmp_path / "bad.toml", receiver, extra='\n[abandoned_cart]\nafter = "x"\n')
    result = CliRunner().invoke(cli, ["--config", str(bad), "status"])
    assert result.exit_code != 0
    assert "configuration: abandoned_cart.after" in result.output
    missing = CliRunner().invoke(cli, ["--config", str(tmp_path / "none.toml"), "status"])
    assert missing.exit_code != 0
    assert "does not exist" in missing.output


def test_config_from_the_environment_variable(
    config: Path, migrated: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOP_EVENTS_CONFIG", str(config))
    result = CliRunner().invoke(cli, ["status", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["paused"] is False


def test_status_shows_an_open_circuit(
    invoke: Invoke, migrated: None, tracker_at: Callable[[datetime], Tracker]
) -> None:
    """The circuit's opening time, next probe and reason in text and JSON; --check says it."""
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    tracker = tracker_at(now)
    with tracker.engine.begin() as conn:
        pause.open_circuit(conn, "no response: ConnectionError", now, now + timedelta(seconds=10))
    with freeze_time(now):
        report = status_json(invoke)
        human = invoke("status")
        check = invoke("status", "--check")
    assert report["circuit_open"] is True
    assert report["circuit_since"] == now.isoformat()
    assert report["circuit_next_probe"] == (now + timedelta(seconds=10)).isoformat()
    assert report["circuit_reason"] == "no response: ConnectionError"
    assert "circuit open since 2026-11-26T12:00:00+00:00" in human.output
    assert (check.exit_code, check.output) == (1, "circuit\n")
    with tracker.engine.begin() as conn:
        assert pause.close_circuit(conn)
    assert status_json(invoke)["circuit_open"] is False


def test_worker_refuses_an_unmigrated_database(invoke: Invoke, tmp_path: Path) -> None:
    result = invoke("worker")
    assert result.exit_code == 1
    assert result.output == (
        f"Error: sqlite:///{tmp_path / 'events.db'}: the plugin's tables are missing (there is "
        f"no database file {tmp_path / 'events.db'}): run `shop-events migrate` first\n"
    )
    assert not (tmp_path / "events.db").exists()


@pytest.mark.parametrize(
    "command",
    [("scan",), ("dispatch",), ("replay",), ("purge",), ("resume",), ("worker",)],
    ids=lambda args: args[0],
)
def test_without_a_config_commands_say_which_database_has_no_tables_and_create_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, list(command))
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    database = tmp_path / "shop_events.db"
    assert result.output.splitlines() == [
        f"Error: sqlite:///{database}: the plugin's tables are missing (there is no database "
        f"file {database}): run `shop-events migrate` first"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_database_that_cannot_be_read_is_one_line_without_its_password(tmp_path: Path) -> None:
    config = tmp_path / "shop.toml"
    config.write_text(
        '[database]\nurl = "postgresql+psycopg://shop:s3cr3t-pw@127.0.0.1:9/shop"\n'
        'connect_timeout = "1s"\n',
        encoding="utf-8",
    )
    for command in (["status"], ["status", "--check"], ["scan"]):
        result = CliRunner().invoke(cli, ["--config", str(config), *command])
        assert result.exit_code == 1
        assert result.exception is None or isinstance(result.exception, SystemExit)
        [line] = result.output.splitlines()
        assert line.startswith(
            "Error: postgresql+psycopg://shop:***@127.0.0.1:9/shop: cannot read the database: "
        )
        assert "s3cr3t-pw" not in result.output


def test_a_database_without_the_tables_is_named_too(invoke: Invoke, tmp_path: Path) -> None:
    database = tmp_path / "events.db"
    sqlite3.connect(database).close()  # a file, but no tables in it
    result = invoke("scan")
    assert result.exit_code == 1
    assert "the database has none of the plugin's tables" in result.output
    assert str(database) in result.output


# ---------------------------------------------------------------------------------- status


def test_status_counts_and_age(
    invoke: Invoke, migrated: None, tracker_at: Callable[[datetime], Tracker]
) -> None:
    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    early = tracker_at(now - timedelta(hours=2))
    early.custom_event("wishlist_reminder", key_value="ann@example.com", params={"n": 1})
    assert early.dispatch().sent == 1
    early.custom_event("wishlist_reminder", key_value="bob@example.com", params={"n": 2})
    later = tracker_at(now - timedelta(minutes=5))
    later.custom_event("login", key_value="cy@example.com", params={"n": 3})

    with freeze_time(now):
        report = status_json(invoke)
        human = invoke("status")
    by_status = report["by_status"]
    assert isinstance(by_status, dict)
    assert by_status["sent"] == 1
    assert by_status["pending"] == 2
    assert by_status["dead"] == 0
    assert sum(by_status.values()) == 3
    assert report["by_type"] == {
        "wishlist_reminder": {"sent": 1, "pending": 1},
        "login": {"pending": 1},
    }
    assert report["oldest_pending_age_seconds"] == 7200.0
    assert report["paused"] is False
    assert report["pause_reason"] is None
    assert report["api_key_set"] is True
    assert human.exit_code == 0, human.output
    assert "events by status: pending 2, in_flight 0, sent 1, dead 0, superseded 0" in human.output
    assert "  login: pending 1" in human.output
    assert "  wishlist_reminder: pending 1, sent 1" in human.output
    assert "oldest pending: 2h old" in human.output
    assert "delivery running" in human.output


def test_status_of_an_empty_outbox(invoke: Invoke, migrated: None, tmp_path: Path) -> None:
    report = status_json(invoke)
    assert report["oldest_pending_age_seconds"] is None
    assert report["by_type"] == {}
    assert report["database"] == f"sqlite:///{tmp_path / 'events.db'}"
    human = invoke("status").output
    assert "oldest pending: none" in human
    assert human.startswith(f"database: sqlite:///{tmp_path / 'events.db'}\n")


def test_status_without_a_config_names_the_database_and_creates_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    database = tmp_path / "shop_events.db"
    human = runner.invoke(cli, ["status"])
    assert human.exit_code == 1
    assert human.exception is None or isinstance(human.exception, SystemExit)
    assert human.output.splitlines() == [
        f"database: sqlite:///{database}",
        f"the plugin's tables are missing (there is no database file {database}): "
        "run `shop-events migrate` first",
    ]
    machine = runner.invoke(cli, ["status", "--json"])
    assert machine.exit_code == 1
    assert json.loads(machine.output)["database"] == f"sqlite:///{database}"
    assert "tables are missing" in json.loads(machine.output)["missing_tables"]
    check = runner.invoke(cli, ["status", "--check"])
    assert (check.exit_code, check.output) == (1, "missing-tables\n")
    assert list(tmp_path.iterdir()) == []

    assert runner.invoke(cli, ["migrate"]).exit_code == 0  # the same file, now with its tables
    assert runner.invoke(cli, ["status"]).exit_code == 0
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".db"] == ["shop_events.db"]


def test_status_check_exits_non_zero_with_one_word(
    tmp_path: Path, receiver: Receiver, tracker_at: Callable[[datetime], Tracker]
) -> None:
    """ok and 0 while delivery runs; else the reason and 1: missing tables, a pause, a stall."""
    config = write_config(tmp_path / "shop.toml", receiver, key=WRONG_KEY)
    runner = CliRunner()

    def check() -> tuple[int, str]:
        result = runner.invoke(cli, ["--config", str(config), "status", "--check"])
        assert result.exception is None or isinstance(result.exception, SystemExit)
        return result.exit_code, result.output

    assert check() == (1, "missing-tables\n")
    assert runner.invoke(cli, ["--config", str(config), "migrate"]).exit_code == 0
    assert check() == (0, "ok\n")

    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    tracker_at(now).custom_event("login", key_value="ann@example.com", params={"n": 1})
    with freeze_time(now + timedelta(minutes=15)):
        assert check() == (0, "ok\n")  # as old as alerts.stall_after: not yet stalled
    with freeze_time(now + timedelta(minutes=15, seconds=1)):
        assert check() == (1, "stalled\n")

    with freeze_time(now):
        assert runner.invoke(cli, ["--config", str(config), "dispatch"]).exit_code == 0  # 401
        assert check() == (1, "paused\n")
    with freeze_time(now + timedelta(hours=1)):  # pause over; the pending event still waits
        assert check() == (1, "stalled\n")


# ------------------------------------------------------------------------------- send-test


def test_send_test_delivers_one_event_now_outside_the_outbox(
    invoke: Invoke, migrated: None, receiver: Receiver
) -> None:
    result = invoke("send-test", "--email", "ann@example.com")
    assert result.exit_code == 0, result.output
    assert "sent: HTTP 200" in result.output
    [event] = receiver.events
    assert event["eventTypeKey"] == "shop_events_test"
    assert event["keyValue"] == "ann@example.com"
    assert Receiver.params(event)["email"] == "ann@example.com"
    assert len(receiver.requests) == 1
    assert basic_password(receiver) == receiver.api_key
    assert set(status_json(invoke)["by_status"].values()) == {0}  # type: ignore[attr-defined]


def test_send_test_needs_no_tables_and_creates_no_database(
    invoke: Invoke, receiver: Receiver, tmp_path: Path
) -> None:
    result = invoke("send-test", "--email", "ann@example.com")
    assert result.exit_code == 0, result.output
    assert len(receiver.events) == 1
    assert not (tmp_path / "events.db").exists()


def test_send_test_event_type_option(invoke: Invoke, migrated: None, receiver: Receiver) -> None:
    result = invoke("send-test", "--email", "ann@example.com", "--event-type", "my_check")
    assert result.exit_code == 0, result.output
    assert "'my_check'" in result.output
    assert receiver.events[0]["eventTypeKey"] == "my_check"


def test_send_test_refuses_bad_input_naming_the_field(invoke: Invoke, receiver: Receiver) -> None:
    result = invoke("send-test", "--email", "not-an-email")
    assert result.exit_code == 2
    assert "email:" in result.output
    assert receiver.requests == []


def test_send_test_with_a_wrong_key_says_so_and_neither_pauses_nor_sends_later(
    tmp_path: Path,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = write_config(tmp_path / "shop.toml", receiver, key=WRONG_KEY)
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(cli, ["--config", str(wrong), *args], catch_exceptions=False)

    assert run("migrate").exit_code == 0
    result = run("send-test", "--email", "ann@example.com")
    assert result.exit_code == 1
    assert "not sent: HTTP 401" in result.output
    assert "the platform refused the key: check api.key; delivery was not paused" in result.output
    assert WRONG_KEY not in result.output
    assert WRONG_KEY not in caplog.text
    assert basic_password(receiver) == WRONG_KEY  # it really was sent, as the password
    assert [r.method for r in receiver.requests] == ["POST"]  # no key check, no pause

    report = json.loads(run("status", "--json").stdout)
    assert report["paused"] is False
    assert set(report["by_status"].values()) == {0}  # nothing queued for later
    receiver.api_key = WRONG_KEY  # the key becomes good: nothing was kept to send
    assert "sent 0" in run("dispatch").output
    assert receiver.events == []
    again = run("send-test", "--email", "bob@example.com")  # and a second try is sent now
    assert again.exit_code == 0, again.output
    assert [e["keyValue"] for e in receiver.events] == ["bob@example.com"]


def test_send_test_without_an_answer_or_a_key_says_why(
    tmp_path: Path, receiver: Receiver, invoke: Invoke
) -> None:
    receiver.script(Reply(400, "bad"))
    refused = invoke("send-test", "--email", "ann@example.com")
    assert (refused.exit_code, refused.output) == (1, "Error: not sent: HTTP 400: bad\n")
    nobody = write_config(tmp_path / "gone.toml", receiver)
    nobody.write_text(
        nobody.read_text().replace(receiver.base_url, "http://127.0.0.1:9/api"), "utf-8"
    )
    gone = invoke("send-test", "--email", "ann@example.com", config_file=nobody)
    assert gone.exit_code == 1
    assert "not sent: no answer from the API" in gone.output
    keyless = write_config(tmp_path / "keyless.toml", receiver, key="")
    keyless.write_text(keyless.read_text().replace(receiver.base_url, "https://api.example/api"))
    unset = invoke("send-test", "--email", "ann@example.com", config_file=keyless)
    assert (unset.exit_code, unset.output) == (
        1,
        "Error: not sent: no api.key is set (SHOP_EVENTS_API_KEY)\n",
    )


def queue_event(config: Path, email: str) -> None:
    """One event in the outbox of the config's database, as a capture queues it."""
    tracker = Tracker(Settings.from_file(config, env={}))
    try:
        tracker.custom_event("wishlist_reminder", key_value=email, params={"email": email})
    finally:
        tracker.engine.dispose()


def test_resume_lifts_a_pause(tmp_path: Path, receiver: Receiver) -> None:
    config = write_config(tmp_path / "shop.toml", receiver, key=WRONG_KEY)
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(cli, ["--config", str(config), *args], catch_exceptions=False)

    assert run("migrate").exit_code == 0
    queue_event(config, "ann@example.com")
    assert run("dispatch").exit_code == 0  # 401: delivery pauses
    assert json.loads(run("status", "--json").stdout)["paused"] is True

    receiver.api_key = WRONG_KEY  # the operator fixes the key on the platform's side
    resumed = run("resume")
    assert resumed.exit_code == 0
    assert "delivery resumed" in resumed.output
    report = json.loads(run("status", "--json").stdout)
    assert report["paused"] is False
    assert report["pause_reason"] is None
    assert "delivery was not paused" in run("resume").output

    sent = run("dispatch")
    assert sent.exit_code == 0
    assert "sent 1" in sent.output
    assert [e["keyValue"] for e in receiver.events] == ["ann@example.com"]


# ---------------------------------------------------------------------- replay, scan, dispatch


def test_replay_requeues_dead_rows(
    invoke: Invoke, migrated: None, receiver: Receiver, config: Path
) -> None:
    receiver.script(Reply(400, "bad"))
    queue_event(config, "ann@example.com")
    failed = invoke("dispatch")
    assert "dead 1" in failed.output
    report = status_json(invoke)
    assert report["by_status"]["dead"] == 1  # type: ignore[index]
    assert report["last_error"] == "HTTP 400: bad"

    assert "requeued 0 dead events" in invoke("replay", "--type", "other_type").output
    replayed = invoke("replay")
    assert replayed.exit_code == 0
    assert "requeued 1 dead events" in replayed.output
    report = status_json(invoke)
    assert report["by_status"]["dead"] == 0  # type: ignore[index]
    assert report["by_status"]["pending"] == 1  # type: ignore[index]

    sent = invoke("dispatch")
    assert "sent 1, retried 0, dead 0, superseded 0" in sent.output
    assert [e["keyValue"] for e in receiver.events] == ["ann@example.com"]
    assert status_json(invoke)["by_status"]["sent"] == 1  # type: ignore[index]


def test_replay_by_id(invoke: Invoke, migrated: None, receiver: Receiver, config: Path) -> None:
    receiver.script(Reply(400, "bad"), Reply(400, "bad"))
    queue_event(config, "ann@example.com")
    queue_event(config, "bob@example.com")
    assert "dead 2" in invoke("dispatch").output
    tracker = Tracker(Settings.from_file(config, env={}))
    with tracker.engine.connect() as conn:
        ids = dict(conn.execute(select(outbox.c.key_value, outbox.c.id)).all())
    tracker.engine.dispose()
    result = invoke("replay", "--id", str(ids["bob@example.com"]))
    assert "requeued 1 dead events" in result.output
    by_status = status_json(invoke)["by_status"]
    assert by_status["dead"] == 1  # type: ignore[index]
    assert by_status["pending"] == 1  # type: ignore[index]


def due_carts(tracker: Tracker, count: int) -> None:
    for i in range(count):
        tracker.cart_updated(
            f"cart-{i}",
            email=f"shopper{i}@example.com",
            items=[Item(name="Hair styler", price="341", url="https://shop.example/p/1")],
            currency="EUR",
        )


def test_scan_then_dispatch(
    invoke: Invoke, migrated: None, tracker_at: Callable[[datetime], Tracker], receiver: Receiver
) -> None:
    due_carts(tracker_at(datetime.now(UTC) - timedelta(hours=2)), 2)
    scanned = invoke("scan")
    assert scanned.exit_code == 0
    assert "abandoned 2, suppressed 0, queued 2" in scanned.output
    dispatched = invoke("dispatch")
    assert "sent 2" in dispatched.output
    assert sorted(e["keyValue"] for e in receiver.events) == [
        "shopper0@example.com",
        "shopper1@example.com",
    ]
    assert {e["eventTypeKey"] for e in receiver.events} == {"abandoned_cart"}


# ---------------------------------------------------------------------------- real worker


@pytest.mark.slow
def test_worker_process_sends_and_stops_cleanly_on_sigterm(
    tmp_path: Path, receiver: Receiver, tracker_at: Callable[[datetime], Tracker]
) -> None:
    config = write_config(
        tmp_path / "shop.toml",
        receiver,
        extra='\n[abandoned_cart]\nafter = "1h"\n',
        scheduler='enabled = true\nscan_interval = "1s"\ndispatch_interval = "1s"',
    )
    settings = Settings.from_file(config, env={})
    assert settings.scheduler.enabled
    old = tracker_at(datetime.now(UTC) - timedelta(hours=2))
    old.migrate()
    due_carts(old, 3)
    old.engine.dispose()

    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOP_EVENTS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from shop_events.cli import main; main()",
                "--config",
                str(config),
                "worker",
            ],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            arrived = receiver.wait_for_arrivals(3, timeout=WORKER_TIMEOUT)
            assert arrived, f"only {receiver.arrived} events arrived:\n{log_path.read_text()}"
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=WORKER_TIMEOUT)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=WORKER_TIMEOUT)
    output = log_path.read_text()
    assert code == 0, output
    assert "SIGTERM: finishing sends in progress" in output
    assert "stopped" in output
    assert str(receiver.api_key) not in output

    assert sorted(e["keyValue"] for e in receiver.events) == [
        f"shopper{i}@example.com" for i in range(3)
    ]
    checker = tracker_at(datetime.now(UTC))
    with checker.engine.connect() as conn:
        statuses = [r.status for r in conn.execute(select(outbox.c.status, outbox.c.lease_token))]
        leases = conn.execute(select(outbox.c.id).where(outbox.c.lease_token.is_not(None))).all()
    assert OutboxStatus.IN_FLIGHT.value not in statuses
    assert statuses == [OutboxStatus.SENT.value] * 3
    assert leases == []
