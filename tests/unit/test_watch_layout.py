"""`recovery watch`'s live table fitted to small and large terminals (rich console capture
at 80x24 and 200x50; pure, no Redis)."""

from __future__ import annotations

import pytest
from rich.console import Console

from workers.ops.watch import FeatureRow, RunView, choose_columns, choose_rows, render_view


def row(i: int, state: str = "ENABLED", **kw: object) -> FeatureRow:
    fields: dict[str, object] = {
        "name": f"feature-{i:02d}", "state": state, "percent": 100 if state == "ENABLED" else 0,
        "health": "HEALTHY", "attempts": 1, "quarantined": False, "blocked": False,
        "note": f"feature-{i:02d}: ENABLED (promoted) — error rate 0.1% observed over 900 requests",
    }  # fmt: skip
    fields.update(kw)
    return FeatureRow(**fields)  # type: ignore[arg-type]


def thirty() -> tuple[FeatureRow, ...]:
    """30 features: 20 ENABLED, 3 TESTING, 4 pending, a quarantined one deep in the list,
    one blocked by it and one rolled back by hand."""
    rows = [row(i) for i in range(20)]
    rows += [row(i, "TESTING", percent=35, note="ramped at 35%") for i in (20, 21, 22)]
    rows += [row(i, "DISABLED", attempts=0, note="") for i in (23, 24, 25, 26)]
    rows.append(row(27, "DISABLED", quarantined=True, attempts=3, health="UNHEALTHY",
                    note="feature-27: QUARANTINED — error rate 31% after 3 attempts"))  # fmt: skip
    rows.append(row(28, "DISABLED", blocked=True, attempts=0, note="blocked by feature-27"))
    rows.append(row(29, "DISABLED", rolled_back=True, note="rolled back (manual)"))
    return tuple(rows)


def view(rows: tuple[FeatureRow, ...]) -> RunView:
    return RunView(
        run_id="20261130-181247-0581ca", plan="shop-checkout", status="RUNNING", reason="",
        started_at=1000.0, finished_at=None, frozen=None, rows=rows, settled=22,
        total=len(rows), eta_s=95.0, now=1100.0,
    )  # fmt: skip


def screen(rows: tuple[FeatureRow, ...], width: int, height: int) -> list[str]:
    console = Console(record=True, width=width, height=height, force_terminal=True)
    console.print(render_view(view(rows), width, height))
    return console.export_text().rstrip("\n").split("\n")


@pytest.mark.parametrize(("width", "height"), [(80, 24), (200, 50), (60, 15)])
def test_fits_the_terminal_and_never_hides_a_problem_row(width: int, height: int) -> None:
    """At each size the view fits the screen, shows the quarantined, blocked and rolled-back
    rows with their full state, and counts every hidden row by state."""
    lines = screen(thirty(), width, height)
    assert len(lines) <= height and all(len(line) <= width for line in lines), lines
    text = "\n".join(lines)
    for name, state in (("feature-27", "QUARANTINED"), ("feature-28", "BLOCKED")):
        line = next(line for line in lines if name in line)
        assert state in line
    assert "feature-29" in text
    assert "…" not in " ".join(line.split()[1] for line in lines if line.startswith("feature-"))
    shown = sum(1 for line in lines if line.startswith("feature-"))
    hidden = sum(int(w.lstrip("+")) for w in text.split() if w.startswith("+") and w[1:].isdigit())
    assert shown + hidden == 30
    if height < 30:
        assert "more ENABLED" in text and "..." not in text


def test_large_terminal_shows_everything_in_full() -> None:
    """At 200x50 all 30 rows show with the ramp bar, health and the whole latest note."""
    lines = screen(thirty(), 200, 50)
    assert sum(1 for line in lines if line.startswith("feature-")) == 30
    assert "more" not in lines[-1]
    assert any("error rate 0.1% observed over 900 requests" in line for line in lines)
    assert any("━" in line and "35%" in line for line in lines)  # ramp bar drawn


def test_rows_fill_by_priority_in_dispatch_order() -> None:
    """Problem rows first, then TESTING, then pending DISABLED, then ENABLED; shown rows
    keep dispatch order; the summary counts the rest by state."""
    shown, summary = choose_rows(thirty(), 10)
    names = [r.name for r in shown]
    assert names == sorted(names)
    assert {"feature-27", "feature-28", "feature-29"} <= set(names)
    assert {"feature-20", "feature-21", "feature-22"} <= set(names)
    assert len(shown) == 9 and summary == "+1 more DISABLED, +20 more ENABLED"
    assert choose_rows(thirty(), None) == (list(thirty()), "")


def test_columns_degrade_in_the_documented_order() -> None:
    """Shrinking the width first cuts the note, then drops the bar, the note and health,
    then cuts feature names; state and attempts stay whole."""
    rows = thirty()
    seen: list[tuple[bool, bool, bool, bool]] = []
    notes_with_bar: list[int] = []
    for width in range(200, 30, -1):
        c = choose_columns(rows, width)
        assert c.state == len("QUARANTINED") and c.att == 3
        assert c.total <= width or c.feature == 6
        assert c.latest == 0 or c.latest >= 20
        if c.ramp_bar:
            notes_with_bar.append(c.latest)
        level = (c.ramp_bar, c.latest > 0, c.health > 0, c.feature == len("feature-00"))
        if not seen or seen[-1] != level:
            seen.append(level)
    assert seen == [
        (True, True, True, True),  # everything; the note shrinks to 20 columns first
        (False, True, True, True),  # bare percent
        (False, False, True, True),  # no note
        (False, False, False, True),  # no health
        (False, False, False, False),  # names cut
    ]
    assert notes_with_bar == sorted(notes_with_bar, reverse=True) and notes_with_bar[-1] == 20


def test_unmeasured_feature_shows_not_measured() -> None:
    """A feature with ``source: none`` shows `not measured`, never HEALTHY."""
    rows = (row(1, measured=False), row(2))
    lines = screen(rows, 200, 50)
    assert "not measured" in next(line for line in lines if "feature-01" in line)
    assert "HEALTHY" in next(line for line in lines if "feature-02" in line)


def held_rows() -> tuple[FeatureRow, ...]:
    """thirty() plus one feature per hold, and one baking."""
    return (
        *thirty(),
        row(30, "TESTING", percent=50, held="paused", note="paused by alice — vendor"),
        row(31, "TESTING", percent=50, held="awaiting_approval", awaiting=100, note="gate"),
        row(32, "TESTING", percent=10, held="insufficient_traffic", note="0.5 requests/s"),
        row(33, "TESTING", percent=50, held="unhealthy_hold", health="UNHEALTHY", note="held"),
        row(34, "ENABLED", percent=100, held="baking", bake_left_s=75.0, note="ENABLED (promoted)"),
    )


def test_holds_and_bakes_have_their_own_labels() -> None:
    """A held row shows why it holds instead of its state, a baking row BAKING with its
    bake's time left; only the holds that wait for an operator (and the quarantine) get a
    `needs an operator` line, each naming its command."""
    lines = screen(held_rows(), 200, 60)
    labels = {line.split()[0]: line.split()[1] for line in lines if line.startswith("feature-3")}
    assert labels == {"feature-30": "PAUSED", "feature-31": "AWAITING", "feature-32": "LOW",
                      "feature-33": "HELD", "feature-34": "BAKING"}  # fmt: skip
    assert "bake ends in 1:15 · ENABLED (promoted)" in next(
        line for line in lines if line.startswith("feature-34")
    )
    needs = [line for line in lines if line.startswith("needs an operator")]
    rid = "20261130-181247-0581ca"
    assert needs == [
        "needs an operator: feature-27 is quarantined — recovery retry "
        f"{rid} feature-27 --reason '<why>'",
        f"needs an operator: feature-30 is paused — recovery resume {rid} feature-30 --reason "
        "'<why>'",
        "needs an operator: feature-31 awaits approval before 100% — recovery approve "
        f"{rid} feature-31 --reason '<why>'",
        "needs an operator: feature-33 is held unhealthy at 50% — recovery retry|promote "
        f"{rid} feature-33 --reason '<why>', or recovery rollback feature-33 --reason '<why>'",
    ]


@pytest.mark.parametrize(("width", "height"), [(80, 24), (60, 20)])
def test_operator_lines_fit_and_baking_rows_give_way(width: int, height: int) -> None:
    """On a small terminal the view still fits and every held row shows; the operator
    lines are wrapped (never cut) while they fit, else one compact line names each
    feature's command verb and where the full commands are; a hidden baking row is
    counted like any other."""
    lines = screen(held_rows(), width, height)
    assert len(lines) <= height and all(len(line) <= width for line in lines), lines
    text = " ".join(" ".join(lines).split())
    for name in ("feature-30", "feature-31", "feature-32", "feature-33"):
        assert any(line.startswith(name) for line in lines), name
    rid = "20261130-181247-0581ca"
    if height >= 24:
        assert text.count("needs an operator:") == 4
        assert f"recovery approve {rid} feature-31 --reason '<why>'" in text
    else:
        assert text.count("needs an operator:") == 1
        assert "feature-31 (approve), feature-33 (retry|promote)" in text
        assert f"the commands: recovery status {rid}" in text
    if not any(line.startswith("feature-34") for line in lines):
        assert "more BAKING" in text
