"""Settings from the environment (prefix ``RECOVERY_``), read once per process."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "get_settings"]


class Settings(BaseSettings):
    """Process settings. Every field maps to ``RECOVERY_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="RECOVERY_", extra="ignore")

    redis_url: str = "redis://localhost:6379/0"
    broker_url: str | None = Field(default=None, description="defaults to redis_url")
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

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
