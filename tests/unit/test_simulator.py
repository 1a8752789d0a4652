"""The routing simulator: exact outcomes on tiny scenarios, the policies' ordering on a short fixed-seed day."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app
from services.router.settings import RouterSettings
from services.simulator import (
    Arrival,
    Paid,
    Scenario,
    Spaces,
    TraceError,
    compared,
    fixed_rule,
    floor_under,
    game_day,
    least_paid,
    read_trace,
    run_policy,
    simulate,
)

#: One Space, exactly 30 s an image, never down, never asleep; paid takes exactly 5 s.
STEADY = Scenario(spaces=Spaces(count=1, service_s=(30.0, 30.0), outages_per_day=0, sleep_after_s=1e9),
                  paid=Paid(median_s=5.0, sigma=0.0, cold_share=0.0))


def test_a_queue_on_one_space_then_the_fixed_rule_spills_to_paid():
    arrivals = [Arrival(0.0, "a"), Arrival(1.0, "b"), Arrival(2.0, "c"), Arrival(100.0, "a")]

    log = simulate(arrivals, STEADY, fixed_rule(2).factory)

    # a is served at once, b waits behind it, c finds depth 2 and is paid; the late a is a cache hit.
    assert [job.path for job in log.jobs] == ["primary", "primary", "fallback", "cache"]
    assert [(job.started, job.done) for job in log.jobs] == [
        (0.0, 30.0), (30.0, 60.0), (2.0, pytest.approx(7.0)), (100.0, 100.0)]
    assert log.spent_usd == pytest.approx(0.0023)


def test_the_budget_gate_holds_the_cap_and_placeholders_go_to_those_that_allow_them():
    # A 90 s deadline leaves 50 s of wait; nothing is measured yet, so a wait is depth / 0.02 per s.
    arrivals = [Arrival(float(i), f"p{i}", deadline_s=90.0, allow_placeholder=i % 2 == 0) for i in range(8)]
    capped = Scenario(spaces=STEADY.spaces, paid=STEADY.paid, cap_usd=0.0046)  # two paid images

    log = simulate(arrivals, capped, compared(RouterSettings(primary_slots=1))[2].factory)

    paths = [job.path for job in log.jobs]
    assert paths[:4] == ["primary", "primary", "fallback", "fallback"]  # waits 0 and 50 s, then 100 s
    assert log.spent_usd == pytest.approx(0.0046)
    # The cap is reached: a job that would miss gets a placeholder if it allows one, else waits on primary.
    assert paths[4:] == ["placeholder", "primary", "placeholder", "primary"]


def test_on_the_built_in_day_the_deadline_policy_beats_the_old_default_and_meets_deadlines():
    arrivals = game_day(7)  # the README's day: 24 h on the simulated clock, about a second per policy
    fixed, old, new = (run_policy(policy, arrivals, Scenario(), seed=7) for policy in compared(RouterSettings()))

    assert fixed.requests == old.requests == new.requests == len(arrivals) > 10_000
    # The new default: cheaper than the old one, far shorter waits and fewer misses than either.
    assert new.cost_usd < 0.75 * old.cost_usd
    assert new.wait_p95 < old.wait_p95 / 3 and new.wait_p95 < fixed.wait_p95 / 3
    assert new.miss_rate < old.miss_rate / 10 and old.miss_rate < fixed.miss_rate
    # The fixed rule is the cheapest only because it lets deadlines pass.
    assert fixed.cost_usd < new.cost_usd and fixed.miss_rate > 0.05
    # And the target (half the fixed rule's cost at its p95 wait) is below what any policy can pay.
    floor = floor_under(fixed, Scenario())
    assert floor.wait_p95 == fixed.wait_p95 and 0.5 < floor.share_of_baseline < 1
    assert floor.paid * Scenario().paid.price_usd == pytest.approx(floor.cost_usd)
    # Priority lanes (urgent first) let the deadline policy pay less and miss nothing, but park jobs for hours.
    laned = run_policy(compared(RouterSettings())[2], arrivals, Scenario(primary_order="lanes"), seed=7)
    assert laned.cost_usd < new.cost_usd and laned.miss_rate <= new.miss_rate
    assert laned.wait_max_s > 3600 > new.wait_max_s


def test_the_bound_counts_what_one_space_cannot_start_in_time():
    # One image every 10 s, 0 s of wait allowed: of 5 jobs at once, 1 starts at once, 4 must be paid...
    burst = [0.0] * 5
    assert least_paid(burst, capacity_per_s=0.1, wait_s=0.0, tail_share=0.0) == 4
    # ...a 20 s wait lets two more start, and a 20 % tail lets one more wait past it.
    assert least_paid(burst, capacity_per_s=0.1, wait_s=20.0, tail_share=0.0) == 2
    assert least_paid(burst, capacity_per_s=0.1, wait_s=20.0, tail_share=0.2) == 1
    # Spread out at the Space's own pace, nothing need be paid; two bursts add up.
    assert least_paid([10.0 * i for i in range(50)], capacity_per_s=0.1, wait_s=0.0, tail_share=0.0) == 0
    assert least_paid([0.0] * 5 + [1000.0] * 5, capacity_per_s=0.1, wait_s=0.0, tail_share=0.0) == 8


def test_with_lanes_an_urgent_job_overtakes_the_queue_and_the_policy_sees_only_what_is_ahead():
    # b and c (no deadline) wait behind a; d (a 120 s deadline) arrives last and is served next.
    arrivals = [Arrival(0.0, "a"), Arrival(1.0, "b"), Arrival(2.0, "c"), Arrival(3.0, "d", deadline_s=120.0)]
    laned = Scenario(spaces=STEADY.spaces, paid=STEADY.paid, primary_order="lanes")

    fifo = simulate(arrivals, STEADY, compared(RouterSettings(primary_slots=1))[2].factory)
    log = simulate(arrivals, laned, compared(RouterSettings(primary_slots=1))[2].factory)

    # In one queue d finds 3 ahead (150 s at the floor rate of 0.02/s > 120 - 40 s) and is paid;
    # in lanes it has only a's image ahead, goes free, and starts when a is done.
    assert [job.path for job in fifo.jobs] == ["primary", "primary", "primary", "fallback"]
    assert [job.path for job in log.jobs] == ["primary"] * 4
    assert [job.started for job in log.jobs] == [0.0, 60.0, 90.0, 30.0]


def test_a_trace_file_is_read_with_defaults_for_missing_fields(tmp_path: Path):
    trace = tmp_path / "trace.csv"
    trace.write_text("time_s,deadline_s,priority,prompt_hash,allow_placeholder\n"
                     "5,,standard,abc,\n2.5,60,high,def,true\n")

    assert read_trace(trace) == [Arrival(2.5, "def", 60.0, "high", True), Arrival(5.0, "abc")]


@pytest.mark.parametrize(("row", "message"), [
    ("x,,standard,abc,", "line 2: time_s is not a number"),
    ("1,0,standard,abc,", "line 2: deadline_s must be > 0"),
    ("1,,urgent,abc,", "line 2: priority must be standard or high"),
    ("1,,standard,,", "line 2: prompt_hash is empty"),
    ("1,-3,standard,abc,", "line 2: deadline_s must be a finite number >= 0"),
])
def test_a_bad_trace_row_names_its_line_and_field(tmp_path: Path, row: str, message: str):
    trace = tmp_path / "trace.csv"
    trace.write_text("time_s,deadline_s,priority,prompt_hash,allow_placeholder\n" + row + "\n")

    with pytest.raises(TraceError, match=message):
        read_trace(trace)


def test_the_command_prints_every_policy_and_draws_the_plot(tmp_path: Path):
    plot = tmp_path / "tradeoff.png"

    result = CliRunner().invoke(app, ["simulate", "--hours", "1", "--plot", str(plot)])

    assert result.exit_code == 0, result.output
    for name in ("fixed depth 50", "hysteresis", "deadline", "fixed depth 200", "max_wait_s=60", "target",
                 "fluid bound", "deadline, lanes"):
        assert name in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_empty_plot_option_draws_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(app, ["simulate", "--hours", "0.5", "--plot", ""])

    assert result.exit_code == 0, result.output
    assert "plot written" not in result.output and list(tmp_path.iterdir()) == []


def test_the_spaces_sweep_answers_how_many_keep_p95_under_target():
    result = CliRunner().invoke(app, ["simulate", "--hours", "1", "--sweep", "spaces=1,3", "--p95-target", "60",
                                      "--plot", ""])

    assert result.exit_code == 0, result.output
    assert "1 Spaces" in result.output and "3 Spaces" in result.output
    assert "deadline: " in result.output and "keep p95 wait <= 60 s" in result.output


def test_the_cap_sweep_answers_which_monthly_cap_covers_the_load():
    result = CliRunner().invoke(app, ["simulate", "--hours", "1", "--sweep", "cap=0.01,1000", "--plot", ""])

    assert result.exit_code == 0, result.output
    assert "cap $0.01/month" in result.output and "cap $1000/month" in result.output
    assert "deadline: a $1000/month cap is never reached" in result.output


@pytest.mark.parametrize(("args", "message"), [
    (["--sweep", "spaces=1,x"], "must be numbers"),
    (["--sweep", "spaces=1.5"], "not a whole number"),
    (["--sweep", "budget=3"], "expected policies"),
    (["--trace", "/nonexistent/trace.csv"], "No such file"),
])
def test_bad_options_fail_with_a_clear_message(args: list[str], message: str):
    result = CliRunner().invoke(app, ["simulate", "--hours", "0.5", *args])

    assert result.exit_code == 1
    assert message in result.output
