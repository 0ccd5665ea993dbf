"""``shop-events demo``: the demo shop and the local event receiver, served until Ctrl-C.

Both listen on 127.0.0.1 only. The plugin runs inside the shop's process with its scheduler on,
a SQLite file in a temporary (or given) folder, and short timeouts so a cart left alone for a
minute shows up in the receiver's Event history.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Self, TextIO

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from ..config import Settings, format_duration
from ..testing import Receiver
from ..tracker import Tracker
from .shop import create_shop, shop_state, tracker_of

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

DEMO_KEY = "demo-key"
DB_NAME = "shop_events_demo.db"


class Demo:
    """The running demo: a receiver, a tracker with its scheduler, and the shop's server.

    ``Demo(...).start()`` binds both ports (0 picks free ones) and serves the receiver in a
    thread; :meth:`serve_forever` serves the shop in the calling thread; :meth:`stop` ends all.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        shop_port: int = 5000,
        receiver_port: int = 5001,
        db_path: str | Path | None = None,
        *,
        after: str = "1m",
        scan_interval: str = "10s",
        dispatch_interval: str = "2s",
        scheduler: bool = True,
    ) -> None:
        self.host = host
        self._shop_port = shop_port
        self._temp: tempfile.TemporaryDirectory[str] | None = None
        if db_path is None:
            self._temp = tempfile.TemporaryDirectory(prefix="shop-events-demo-")
            self.db_file = Path(self._temp.name) / DB_NAME
        else:
            path = Path(db_path)
            self.db_file = path / DB_NAME if path.is_dir() else path
        self.receiver = Receiver(host, receiver_port, api_key=DEMO_KEY, on_event=self._announce)
        self._intervals = {"scan_interval": scan_interval, "dispatch_interval": dispatch_interval}
        self._after = after
        self._scheduler = scheduler
        self.out: TextIO = sys.stdout
        self.tracker: Tracker | None = None
        self.app: Flask | None = None
        self.server: BaseWSGIServer | None = None

    def start(self) -> Self:
        """Start the receiver, bind the shop, start the plugin and migrate the database."""
        self.receiver.start()
        try:
            # bound first: the recovery links in the emails need the shop's port (0 picks one)
            self.server = make_server(self.host, self._shop_port, _not_ready, threaded=True)
            self._shop_port = self.server.server_port
            root = self.shop_url.rstrip("/")
            settings = Settings.load(
                {
                    "api": {"base_url": self.receiver.base_url, "key": DEMO_KEY},
                    "database": {"url": f"sqlite:///{self.db_file}"},
                    # The cap is as short as the timeout, so one tester can try again at once.
                    "abandoned_cart": {"after": self._after, "contact_interval": self._after},
                    "scheduler": {"enabled": self._scheduler, **self._intervals},
                    "recovery": {"links": True, "base_url": root},
                }
            )
            # the links' key is derived from the shop's secret_key, made with the app
            app = self.app = create_shop(settings, public_url=root, receiver_url=self.receiver.url)
            tracker = self.tracker = tracker_of(app)
            tracker.migrate()  # before the scheduler's first scan, at the first request
            self.server.app = app
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def shop_url(self) -> str:
        """The shop's root URL."""
        return f"http://{self.host}:{self._shop_port}/"

    def banner(self) -> list[str]:
        """The lines printed at start."""
        assert self.tracker is not None
        settings = self.tracker.settings
        return [
            "shop-events demo",
            f"  shop:           {self.shop_url}",
            f"  event history:  {self.receiver.url}",
            f"  database:       {self.db_file}",
            f"  carts are abandoned after {format_duration(settings.abandoned_cart.after)} "
            f"of inactivity (scanned every {format_duration(settings.scheduler.scan_interval)})",
            "  add products, sign up or enter an email on the cart page, then leave the cart alone",
            "  (the reminder's cart_url brings that cart back, in any browser)",
            f"  operator pages: {self.shop_url}shop-events/admin/ (from this computer only)",
            "  Ctrl-C to stop",
        ]

    def serve_forever(self) -> None:
        """Serve the shop in this thread until :meth:`shutdown` or an exception."""
        assert self.server is not None
        self.server.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        """Make :meth:`serve_forever` return (call it from another thread)."""
        if self.server is not None:
            self.server.shutdown()

    def stop(self) -> None:
        """Stop the plugin's scheduler, the shop's server and the receiver; remove temp files."""
        if self.server is not None:
            self.server.server_close()
            self.server = None
        if self.app is not None:
            shop_state(self.app).close()
            self.app = None
        if self.tracker is not None:
            self.tracker.shutdown()
            self.tracker.engine.dispose()
            self.tracker = None
        self.receiver.stop()
        if self._temp is not None:
            self._temp.cleanup()
            self._temp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _announce(self, event: dict[str, Any]) -> None:
        products = len(Receiver.items(event))
        what = f", {products} product{'' if products == 1 else 's'}" if products else ""
        print(
            f"  event received: {event.get('eventTypeKey')} for {event.get('keyValue')}{what}",
            file=self.out,
            flush=True,
        )


def _not_ready(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    """The shop's server until the shop is made (it serves nothing before :meth:`Demo.start`
    returns)."""
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"the demo shop is starting\n"]


def run_demo(
    host: str = "127.0.0.1",
    shop_port: int = 5000,
    receiver_port: int = 5001,
    db_path: str | Path | None = None,
) -> None:
    """Serve the demo shop and the receiver until Ctrl-C or SIGTERM.

    ``db_path`` is a SQLite file or a folder for one; by default a temporary folder that is
    removed at the end.
    """
    _quiet_request_logs()
    with Demo(host, shop_port, receiver_port, db_path) as demo:
        for line in demo.banner():
            print(line, flush=True)
        with _sigterm_as_interrupt(), contextlib.suppress(KeyboardInterrupt):
            demo.serve_forever()
        print("stopping…", flush=True)


def _quiet_request_logs() -> None:
    # One line per image request would bury the plugin's own messages.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    plugin_log = logging.getLogger("shop_events")
    if not plugin_log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("  %(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        plugin_log.addHandler(handler)
        plugin_log.setLevel(logging.INFO)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
