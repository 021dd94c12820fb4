"""The store: the only code that talks to Redis.

:mod:`~pipeline.store.keys` names every key and channel, :mod:`~pipeline.store.connection`
opens the client and translates redis-py's errors, and one module per kind of data reads and
writes it: job records, claims, revocations and the memory of recent exports.
"""
