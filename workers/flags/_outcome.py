"""Time a call and record its outcome: a context manager that is also a decorator."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol, TypeVar

__all__ = ["Outcome"]

F = TypeVar("F", bound=Callable[..., Any])


class _Recorder(Protocol):
    def record(
        self, feature: str, ok: bool, latency_s: float | None = None, *, bad: tuple[str, ...] = ()
    ) -> None: ...


class Outcome:
    """Times a block (or each call of a decorated function) and records it for ``feature``.

    The outcome is an error when an exception matching ``errors`` (default: any
    ``Exception``) escapes, or when :meth:`fail` was called; otherwise it is ok. Other
    ``BaseException`` s (cancellation, ``SystemExit``) record nothing: the call did not
    finish. Exceptions always propagate. Each use (each call, when decorating) is timed
    on its own, so one decorator is safe across threads and coroutines.
    """

    __slots__ = ("_bad", "_errors", "_failed", "_feature", "_recorder", "_t0")

    def __init__(
        self,
        recorder: _Recorder,
        feature: str,
        errors: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    ) -> None:
        self._recorder = recorder
        self._feature = feature
        self._errors = errors
        self._failed = False
        self._bad: list[str] = []
        self._t0 = 0.0

    def fail(self) -> None:
        """Mark this outcome an error without raising (e.g. a degraded response)."""
        self._failed = True

    def bad(self, name: str) -> None:
        """Also count one custom bad event ``bad:<name>`` with this outcome."""
        self._bad.append(name)

    def __enter__(self) -> Outcome:
        self._failed = False
        self._bad = []
        self._t0 = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        latency = time.perf_counter() - self._t0
        if exc_type is None:
            ok = not self._failed
        elif issubclass(exc_type, self._errors):
            ok = False
        elif issubclass(exc_type, Exception):
            ok = not self._failed  # an expected exception (not in ``errors``) is an ok outcome
        else:
            return  # cancelled or exiting: the call has no outcome
        self._recorder.record(self._feature, ok, latency, bad=tuple(self._bad))

    def _fresh(self) -> Outcome:
        return Outcome(self._recorder, self._feature, self._errors)

    def __call__(self, func: F) -> F:
        """Decorate ``func`` (sync or ``async def``): every call is timed and recorded."""
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self._fresh():
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]  # same signature as func

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._fresh():
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]  # same signature as func
