"""A scoped service's registration check and Redis ACL rules (no Redis)."""

from __future__ import annotations

import pytest

from tests.processes import ROOT
from workers.errors import InvalidInput
from workers.store.keys import Keys
from workers.store.redis_services import acl_line, acl_rules, check_registration


def test_scoped_rules_are_the_shared_service_user_s_with_its_own_inbox() -> None:
    """For the default namespace, the scoped user's rules are config/users.acl's `service`
    user's with the shared inbox swapped for the service's own: the two cannot drift."""
    [line] = [
        s for s in (ROOT / "config" / "users.acl").read_text().splitlines()
        if s.startswith("user service ")
    ]  # fmt: skip
    shared = line.split(" ", 4)[4]  # after `user service on >password`
    own = shared.replace("%W~recovery:metrics:inbox ", "%W~recovery:metrics:inbox:checkout ")
    assert own != shared
    assert acl_rules(Keys(), "checkout") == own


def test_the_acl_line_follows_the_namespace() -> None:
    """Every key and channel of the line is under the settings' namespace."""
    line = acl_line(Keys("{shop}"), "search")
    assert line.startswith("user svc-search on #<sha256> resetkeys ")
    patterns = [w for w in line.split() if "~" in w or w.startswith("&")]
    assert patterns and all(w.split("~")[-1].lstrip("&").startswith("{shop}:") for w in patterns)
    assert "%W~{shop}:metrics:inbox:search" in patterns


@pytest.mark.parametrize(
    ("service", "features", "problem"),
    [
        ("Checkout", ["a"], "not a valid service name"),
        ("-x", ["a"], "not a valid service name"),
        ("x" * 65, ["a"], "not a valid service name"),
        ("checkout", [], "at least one feature"),
        ("checkout", ["A"], "not valid feature names"),
        ("checkout", ["a:b"], "not valid feature names"),
        ("checkout", ["a", "a"], "given twice"),
        ("checkout", [f"f{i}" for i in range(1001)], "at most 1000"),
    ],
)
def test_bad_registrations_are_refused(service: str, features: list[str], problem: str) -> None:
    """A malformed service or feature name, no feature, a duplicate or too many raise
    InvalidInput saying so."""
    with pytest.raises(InvalidInput, match=problem):
        check_registration(service, features)


def test_a_good_registration_passes() -> None:
    """Plan names with dots, dashes and underscores are accepted, in the given order."""
    assert check_registration("pay.api_v2-eu", ["b-2", "a.1", "c_3"]) == ("b-2", "a.1", "c_3")
