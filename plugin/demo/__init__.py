"""A runnable demo: a small Flask shop wired to the plugin, and a local event receiver.

``run.run_demo()`` serves both; ``simulate.simulate(n)`` plays scripted shoppers against a moved
clock. :class:`~plugin.demo.receiver.Receiver` is also what the test-suite talks to.
"""

from plugin.demo.receiver import Received, Receiver, Reply

__all__ = ["Received", "Receiver", "Reply"]
