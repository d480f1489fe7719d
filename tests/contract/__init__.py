"""The store contract: what every :class:`workers.store.Store` guarantees, one suite for all.

Test modules run it against one implementation by importing these tests and providing
three fixtures: ``store`` (a fresh, empty store), ``published`` (a callable returning the
flag-change messages published since the test began, oldest first) and ``report`` (a
callable ``report(feature, tick, requests, errors)`` writing counts where the store's
``redis`` metric source reads them). ``tests/unit/test_store_memory.py`` runs it with
:class:`~workers.store.MemoryStore`, ``tests/integration/test_store_redis.py`` with
:class:`~workers.store.RedisStore` against a real redis-server.

Times are passed in (``now``) from a fixed clock ``T``; only lease expiry needs real time
to pass, because Redis runs lease TTLs on its own clock.
"""
