"""A runnable demo: a small Flask shop wired to the plugin, and a local event receiver.

``run.run_demo()`` serves both; ``simulate.simulate(n)`` plays scripted shoppers against a moved
clock. The receiver is :class:`shop_events.testing.Receiver`, which the tests talk to as well.
"""
