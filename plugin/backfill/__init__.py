"""Backfill: the shop's past orders sent to the platform, through the Orders API or as past
events, without starting any live flow.

:mod:`.orders` checks one past order, :mod:`.rows` turns it into its outbox rows, and
:mod:`.run` writes them page by page, each page in one transaction with its checkpoint.
"""
