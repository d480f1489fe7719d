"""``redis+sentinel://`` URLs: parsing, the broker's form, the durability default, and clear
errors for malformed ones (no Redis needed)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from workers.errors import InvalidInput
from workers.sentinel import (
    SentinelURL,
    broker_connection,
    default_wait_replicas,
    is_sentinel_url,
    parse_sentinel_url,
)
from workers.settings import Settings

THREE = "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380,10.0.0.3/mymaster/2"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            THREE,
            SentinelURL(
                sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)),
                master="mymaster",
                db=2,
            ),
        ),
        (
            "redis+sentinel://worker:s%40cret@h1,h2/prm",
            SentinelURL(
                sentinels=(("h1", 26379), ("h2", 26379)),
                master="prm",
                username="worker",
                password="s@cret",
            ),
        ),
        (
            "redis+sentinel://[::1]:26379,h2:1/m/0?sentinel_password=p&sentinel_username=u",
            SentinelURL(
                sentinels=(("::1", 26379), ("h2", 1)),
                master="m",
                sentinel_username="u",
                sentinel_password="p",
            ),
        ),
        (
            "redis+sentinel://:only-password@h1/m",
            SentinelURL(sentinels=(("h1", 26379),), master="m", password="only-password"),
        ),
    ],
)
def test_sentinel_urls_parse(url: str, expected: SentinelURL) -> None:
    """Sentinel hosts (default port 26379, IPv6 in brackets), master name, database and
    both sets of credentials come out of the URL, percent-decoded."""
    assert is_sentinel_url(url)
    assert parse_sentinel_url(url) == expected


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://h1,h2", "/<master name>"),
        ("redis+sentinel://h1/m/x", "bad database number 'x'"),
        ("redis+sentinel://h1/m/0/extra", "/<master name>"),
        ("redis+sentinel:///m", "no sentinel hosts"),
        ("redis+sentinel://h1:notaport/m", "bad sentinel port 'notaport'"),
        ("redis+sentinel://h1:70000/m", "bad sentinel port '70000'"),
        ("redis+sentinel://h1,,h2/m", "empty sentinel host"),
        ("redis+sentinel://[::1/m", "bad sentinel address"),
        ("redis+sentinel://h1/m?socket_timeout=1", "unknown option 'socket_timeout'"),
    ],
)
def test_malformed_sentinel_urls_name_the_problem(url: str, says: str) -> None:
    """A malformed Sentinel URL raises InvalidInput saying what is wrong."""
    with pytest.raises(InvalidInput) as err:
        parse_sentinel_url(url)
    assert says in str(err.value)


def test_errors_never_show_the_passwords() -> None:
    """Neither the server password nor the sentinel password appears in an error message."""
    with pytest.raises(InvalidInput) as err:
        parse_sentinel_url("redis+sentinel://w:topsecret@h1/m/x?sentinel_password=alsosecret")
    assert "topsecret" not in str(err.value) and "alsosecret" not in str(err.value)
    assert "w:***@h1" in str(err.value)


def test_the_broker_gets_one_kombu_sentinel_url_per_sentinel_and_the_master_name() -> None:
    """kombu's Sentinel transport gets ``sentinel://host:port/db`` per sentinel joined by
    ``;`` (credentials on the first, where kombu reads them) and ``master_name``."""
    url, options = broker_connection(
        "redis+sentinel://worker:p%3Bw@h1:26379,[::1]:26380/prm/3?sentinel_password=sp"
    )
    assert url == "sentinel://worker:p%3Bw@h1:26379/3;sentinel://[::1]:26380/3"
    assert options["master_name"] == "prm"
    assert options["sentinel_kwargs"]["password"] == "sp"
    assert options["sentinel_kwargs"]["socket_timeout"] > 0


def test_a_plain_broker_url_is_left_alone() -> None:
    """A ``redis://`` URL goes to Celery unchanged, with no extra transport options."""
    assert broker_connection("redis://h:6379/0") == ("redis://h:6379/0", {})


def test_state_changes_wait_for_one_replica_behind_sentinel_by_default() -> None:
    """Behind Sentinel the store waits for 1 replica unless told otherwise; on a single
    server it waits for none."""
    assert default_wait_replicas(THREE) == 1
    assert default_wait_replicas("redis://localhost:6379/0") == 0
    assert Settings(redis_url=THREE).effective_wait_replicas == 1
    assert Settings(redis_url=THREE, redis_wait_replicas=0).effective_wait_replicas == 0
    assert Settings(redis_url="redis://h/0", redis_wait_replicas=2).effective_wait_replicas == 2


def test_settings_refuse_a_malformed_sentinel_url_up_front() -> None:
    """``RECOVERY_REDIS_URL``/``RECOVERY_BROKER_URL`` with a malformed Sentinel URL fail
    when the settings are read, naming the problem."""
    with pytest.raises(ValidationError, match="must end in /<master name>"):
        Settings(redis_url="redis+sentinel://h1,h2")
    with pytest.raises(ValidationError, match="bad sentinel port"):
        Settings(broker_url="redis+sentinel://h1:x/m")
