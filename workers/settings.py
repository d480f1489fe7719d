"""Settings from the environment (prefix ``RECOVERY_``), read once per process."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from workers.errors import InvalidInput
from workers.sentinel import default_wait_replicas, is_sentinel_url, parse_sentinel_url

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Process settings. Every field maps to ``RECOVERY_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="RECOVERY_", extra="ignore")

    #: a server (``redis://``, ``rediss://``, ``unix://``) or a Sentinel group
    #: (``redis+sentinel://host1:26379,host2:26379,host3:26379/<master>/<db>``, see
    #: :mod:`workers.sentinel`)
    redis_url: str = "redis://localhost:6379/0"
    broker_url: str | None = Field(default=None, description="defaults to redis_url")
    #: replicas that must acknowledge every state change (``WAIT``) before the store
    #: reports it done; unset: 1 with a Sentinel URL, 0 otherwise
    redis_wait_replicas: int | None = Field(default=None, ge=0)
    #: how long a state change waits for those replicas before it fails StoreUnavailable
    redis_wait_timeout_ms: int = Field(default=1000, ge=1)
    #: a Celery result backend URL; set, the verbs senders call (start, abort, freeze,
    #: unfreeze, rollback_feature) store their result or failure there for a day
    result_backend: str | None = None
    namespace: str = Field(default="recovery", pattern=r"^[A-Za-z0-9_.:{}-]{1,64}$")
    #: the beat's period: due evaluations are sent within this much of their time
    beat_interval_s: float = Field(default=0.25, gt=0)
    #: how often a live, measured feature is evaluated; each evaluation also checks the
    #: counts of the tick in progress for a rollback, so a plainly bad feature is turned
    #: off within about this much after its evidence arrives
    evaluate_interval_s: float = Field(default=0.25, gt=0)
    #: look at the counts of the tick in progress for a rollback (off: whole ticks only,
    #: after the flush lag — the pre-0.2 behaviour, kept as the benchmark's baseline)
    early_rollback: bool = True
    lease_ttl_s: float = Field(default=30.0, gt=0)
    metrics_tick_s: int = Field(default=1, ge=1)
    metrics_ttl_s: int = Field(default=3600, ge=10)
    #: evaluations read only ticks older than this, so counts that services flush in the
    #: background (every 0.5 s by default) are in Redis before their tick is read
    metrics_lag_s: float = Field(default=1.0, ge=0)
    run_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    events_maxlen: int = Field(default=100_000, ge=1000)
    max_features: int = Field(default=10_000, ge=1)
    #: self-freeze: more than this share of a run's features UNHEALTHY within the window
    freeze_share: float = Field(default=0.5, gt=0, le=1)
    freeze_window_s: float = Field(default=60.0, gt=0)
    freeze_min_features: int = Field(default=3, ge=1)
    #: how many times a crashing step task is retried before the feature fails
    task_max_retries: int = Field(default=3, ge=0)
    task_time_limit_s: int = Field(default=120, ge=1)

    @field_validator("redis_url", "broker_url", "result_backend")
    @classmethod
    def _sentinel_url_parses(cls, value: str | None) -> str | None:
        # a malformed Sentinel URL fails here, with its reason, not at the first connection
        if value is not None and is_sentinel_url(value):
            try:
                parse_sentinel_url(value)
            except InvalidInput as exc:
                raise ValueError(str(exc)) from None
        return value

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    @property
    def effective_wait_replicas(self) -> int:
        """``redis_wait_replicas``, or the default for ``redis_url`` (see
        :func:`workers.sentinel.default_wait_replicas`)."""
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return default_wait_replicas(self.redis_url)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
