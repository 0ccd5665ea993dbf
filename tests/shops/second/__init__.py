"""A shop shaped like real ones: Flask-SQLAlchemy models whose lines are read by properties
running a query (no relationships), a cart without a ``user`` relationship, products with a
``title``, integer order statuses (``canceled``) with delivery in ``ship_status``,
``CSRFProtect``, Flask-Migrate for its own tables, a relative SQLite URL, and a checkout written
in several commits with the total set last.
"""
