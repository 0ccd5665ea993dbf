"""A local stand-in for the platform, for tests and the demo: a real HTTP server on 127.0.0.1.

:class:`Receiver` answers the Generate event, Orders and contact endpoints like the platform,
keeps what it received, can be scripted to fail, slow down or hang, and shows an *Event
history* page. It needs Flask, which the demo and the test extra install.
"""

from .receiver import Received, Receiver, Reply

__all__ = ["Received", "Receiver", "Reply"]
