"""The shop's own fixtures: an app on an in-memory database with the catalogue, CSRF off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from .app import create_app, seed
from .models import db

TEST_CONFIG = {
    "TESTING": True,
    "SQLALCHEMY_DATABASE_URI": "sqlite://",
    "WTF_CSRF_ENABLED": False,
}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = create_app(TEST_CONFIG, instance_path=str(tmp_path))
    with app.app_context():
        db.create_all()
    seeded = app.test_cli_runner().invoke(seed)
    assert seeded.exit_code == 0, seeded.output
    yield app
    with app.app_context():
        db.session.remove()
        db.drop_all()
        db.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
