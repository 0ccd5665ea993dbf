"""Ways into a host application: its own SQLAlchemy models (``models``) and Flask (``flask``)."""
