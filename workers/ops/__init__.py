"""Operator tools: the ``recovery`` CLI, the live watch, the timeline report, event
descriptions and the Prometheus exporter. They read through :mod:`workers.engine.queries`
and act through the engine."""
