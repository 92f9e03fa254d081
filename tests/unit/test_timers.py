"""Timer definitions: which texts are accepted, when they fire, and how refusals read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import isodate
import pytest
from dateutil.relativedelta import relativedelta
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.definitions.timers import (
    BPMN_ELEMENTS,
    TimerError,
    TimerKind,
    TimerSpec,
    first_due,
    is_expression,
    next_due,
    parse_timer,
)

# A Wednesday, with seconds so that cron's rounding to whole minutes shows.
NOW = datetime(2027, 1, 6, 10, 0, 7, tzinfo=UTC)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def schedule(spec: TimerSpec, now: datetime = NOW, limit: int = 6) -> list[datetime]:
    """The due times of a timer created at `now`, at most `limit` of them."""
    due = first_due(spec, now)
    times: list[datetime] = []
    while due is not None and len(times) < limit:
        times.append(due)
        due = next_due(spec, due, len(times))
    return times


# --- expressions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${reminderDelay}", True),
        ("#{reminderDelay}", True),
        ("=reminderDelay", True),
        ('  = "PT" + string(n) + "M"  ', True),
        ("PT15M", False),
        ("R3/PT10M", False),
        ("0 0/5 * * * ?", False),
        ("${unclosed", False),
    ],
)
def test_is_expression(text: str, expected: bool) -> None:
    assert is_expression(text) is expected


def test_an_expression_is_not_parsed_as_a_literal() -> None:
    with pytest.raises(TimerError, match="is an expression: evaluate it first"):
        parse_timer("duration", "${reminderDelay}")


def test_an_evaluated_value_that_is_not_text_is_refused() -> None:
    value: object = timedelta(minutes=5)  # what a FEEL duration might evaluate to
    with pytest.raises(TimerError, match="must be text, not timedelta"):
        parse_timer("duration", value)  # type: ignore[arg-type]


def test_the_bpmn_element_names_map_to_the_kinds() -> None:
    assert BPMN_ELEMENTS == {"timeDuration": "duration", "timeDate": "date", "timeCycle": "cycle"}


# --- durations --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "length"),
    [
        ("PT15M", timedelta(minutes=15)),
        ("P1DT2H", timedelta(days=1, hours=2)),
        ("PT0.5S", timedelta(milliseconds=500)),
        ("P2W", timedelta(weeks=2)),
        ("PT0S", timedelta(0)),
        (" PT1H ", timedelta(hours=1)),
    ],
)
def test_durations(text: str, length: timedelta) -> None:
    spec = parse_timer("duration", text)
    assert spec.kind == "duration"
    assert spec.duration == length
    assert first_due(spec, NOW) == NOW + length
    assert next_due(spec, NOW + length, 1) is None


def test_months_and_years_are_added_by_the_calendar() -> None:
    spec = parse_timer("duration", "P1M")
    assert spec.duration == relativedelta(months=1)
    assert first_due(spec, at("2027-01-31T12:00:00")) == at("2027-02-28T12:00:00")
    spec = parse_timer("duration", "P1Y2M3DT4H")
    assert first_due(spec, NOW) == at("2028-03-09T14:00:07")


def test_an_exact_duration_is_exact_across_a_daylight_saving_change() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    before_change = datetime(2027, 3, 27, 12, 0, tzinfo=berlin)  # clocks go forward on the 28th
    due = first_due(parse_timer("duration", "PT24H"), before_change)
    assert due is not None
    assert due - before_change == timedelta(hours=24)
    assert due.tzinfo is UTC


# --- dates ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "due"),
    [
        ("2027-01-01T09:00:00Z", at("2027-01-01T09:00:00")),
        ("2027-01-01T09:00:00+02:00", at("2027-01-01T07:00:00")),
        ("2027-01-01T09:00:00", at("2027-01-01T09:00:00")),  # no zone: UTC
        ("2027-06-30T23:59:59.250-05:00", at("2027-07-01T04:59:59.250")),
    ],
)
def test_dates(text: str, due: datetime) -> None:
    spec = parse_timer("date", text)
    assert spec.date == due
    assert first_due(spec, NOW) == due  # even when it has passed: the caller fires it at once
    assert next_due(spec, due, 1) is None


def test_a_date_keeps_its_offset_and_is_due_in_utc() -> None:
    spec = parse_timer("date", "2027-01-01T09:00:00+02:00")
    assert spec.date is not None
    assert spec.date.utcoffset() == timedelta(hours=2)
    assert spec.date.tzinfo == timezone(timedelta(hours=2))
    due = first_due(spec, NOW)
    assert due is not None and due.tzinfo is UTC


# --- ISO 8601 cycles --------------------------------------------------------------------


def test_r3_fires_three_times_then_ends() -> None:
    spec = parse_timer("cycle", "R3/PT10M")
    assert (spec.repetitions, spec.interval, spec.start) == (3, timedelta(minutes=10), None)
    assert schedule(spec) == [NOW + timedelta(minutes=10 * n) for n in (1, 2, 3)]
    assert next_due(spec, NOW + timedelta(minutes=30), 3) is None


def test_r_without_a_count_never_ends() -> None:
    spec = parse_timer("cycle", "R/PT1H")
    assert spec.repetitions is None
    due = NOW
    for fired in range(1, 1000):
        following = next_due(spec, due, fired)
        assert following == due + timedelta(hours=1)
        due = following
    assert next_due(spec, due, 10**9) == due + timedelta(hours=1)


def test_a_cycle_with_a_start_to_come_first_fires_at_the_start() -> None:
    spec = parse_timer("cycle", "R5/2027-01-08T09:00:00Z/PT1H")
    assert spec.start == at("2027-01-08T09:00:00")
    assert schedule(spec) == [at(f"2027-01-08T{hour:02}:00:00") for hour in range(9, 14)]


def test_a_start_with_an_offset() -> None:
    spec = parse_timer("cycle", "R2/2027-01-08T09:00:00+02:00/PT30M")
    assert schedule(spec) == [at("2027-01-08T07:00:00"), at("2027-01-08T07:30:00")]


def test_a_start_that_has_passed_fires_at_the_next_slot_and_the_passed_slots_count() -> None:
    spec = parse_timer("cycle", "R5/2027-01-06T07:30:00Z/PT1H")
    # Slots 07:30 08:30 09:30 have passed at 10:00:07; 10:30 and 11:30 are left.
    assert schedule(spec) == [at("2027-01-06T10:30:00"), at("2027-01-06T11:30:00")]
    assert first_due(spec, at("2027-01-06T10:30:00")) == at("2027-01-06T10:30:00")
    assert first_due(parse_timer("cycle", "R5/2027-01-01T09:00:00Z/PT1H"), NOW) is None


def test_an_unbounded_cycle_from_long_ago_is_found_without_stepping_through_it() -> None:
    spec = parse_timer("cycle", "R/1970-01-01T00:00:00Z/PT1S")
    assert first_due(spec, NOW) == at("2027-01-06T10:00:07")
    assert next_due(spec, at("2027-01-06T10:00:07"), 1) == at("2027-01-06T10:00:08")


def test_a_monthly_cycle_with_a_start_keeps_the_day_of_its_start() -> None:
    spec = parse_timer("cycle", "R/2026-01-31T00:00:00Z/P1M")
    assert schedule(spec, limit=4) == [
        at("2027-01-31T00:00:00"),
        at("2027-02-28T00:00:00"),
        at("2027-03-31T00:00:00"),
        at("2027-04-30T00:00:00"),
    ]


@pytest.mark.parametrize("interval", ["P1M", "P1M20D", "P1Y", "P2M3DT4H"])
def test_a_calendar_cycle_from_long_ago_fires_at_the_first_slot_not_before_now(
    interval: str,
) -> None:
    spec = parse_timer("cycle", f"R/1990-01-31T00:00:00Z/{interval}")
    assert spec.start is not None and spec.interval is not None
    slots = [spec.start]
    while slots[-1] < NOW:
        slots.append((spec.start + spec.interval * len(slots)).astimezone(UTC))
    assert schedule(spec, limit=2) == [slots[-1], spec.start + spec.interval * len(slots)]


def test_a_monthly_cycle_without_a_start_adds_to_the_previous_due_time() -> None:
    spec = parse_timer("cycle", "R3/P1M")
    start = at("2027-01-31T08:00:00")
    assert schedule(spec, now=start) == [
        at("2027-02-28T08:00:00"),
        at("2027-03-28T08:00:00"),
        at("2027-04-28T08:00:00"),
    ]


# --- cron -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Unix, 5 fields
        ("*/5 * * * *", ["10:05:00", "10:10:00", "10:15:00"]),
        ("0 12 * * *", ["12:00:00", "2027-01-07T12:00:00", "2027-01-08T12:00:00"]),
        # 6 fields, seconds first
        ("30 */20 * * * *", ["10:00:30", "10:20:30", "10:40:30"]),
        # Quartz, as Camunda 7 writes it
        ("0 0/5 * * * ?", ["10:05:00", "10:10:00", "10:15:00"]),
        ("0/5 0/1 * 1/1 * ? *", ["10:00:10", "10:00:15", "10:00:20"]),
        ("0 15 10 ? * *", ["10:15:00", "2027-01-07T10:15:00", "2027-01-08T10:15:00"]),
        ("0 0 12 ? * 2-6", ["12:00:00", "2027-01-07T12:00:00", "2027-01-08T12:00:00"]),
        ("0 0 12 ? * 6L", ["2027-01-29T12:00:00", "2027-02-26T12:00:00", "2027-03-26T12:00:00"]),
        ("0 0 12 ? * 6#2", ["2027-01-08T12:00:00", "2027-02-12T12:00:00", "2027-03-12T12:00:00"]),
        ("0 0 12 ? * 1", ["2027-01-10T12:00:00", "2027-01-17T12:00:00", "2027-01-24T12:00:00"]),
        ("0 0 8 L * ?", ["2027-01-31T08:00:00", "2027-02-28T08:00:00", "2027-03-31T08:00:00"]),
        # Camunda 8 (Spring): seconds first, names
        (
            "0 0 9 * * MON-FRI",
            ["2027-01-07T09:00:00", "2027-01-08T09:00:00", "2027-01-11T09:00:00"],
        ),
        (
            "0 0 9-17/4 * * SAT,SUN",
            ["2027-01-09T09:00:00", "2027-01-09T13:00:00", "2027-01-09T17:00:00"],
        ),
        (
            "0 30 6 1 JAN-MAR *",
            ["2027-02-01T06:30:00", "2027-03-01T06:30:00", "2028-01-01T06:30:00"],
        ),
        ("0 0 12 * * 5L", ["2027-01-29T12:00:00", "2027-02-26T12:00:00", "2027-03-26T12:00:00"]),
        ("0 0 12 * * 0", ["2027-01-10T12:00:00", "2027-01-17T12:00:00", "2027-01-24T12:00:00"]),
        ("0 0 12 * * 7", ["2027-01-10T12:00:00", "2027-01-17T12:00:00", "2027-01-24T12:00:00"]),
        ("@daily", ["2027-01-07T00:00:00", "2027-01-08T00:00:00", "2027-01-09T00:00:00"]),
        ("@hourly", ["11:00:00", "12:00:00", "13:00:00"]),
    ],
)
def test_cron(text: str, expected: list[str]) -> None:
    spec = parse_timer("cycle", text)
    assert spec.cron is not None and spec.repetitions is None
    want = [at(e) if "T" in e else at(f"2027-01-06T{e}") for e in expected]
    assert schedule(spec, limit=3) == want


def test_unix_cron_fires_on_either_day_field_and_six_fields_on_both() -> None:
    # 1st of the month or a Monday (Unix); the 1st when it is a Monday (Spring, Camunda 8).
    unix = parse_timer("cycle", "0 0 1 * MON")
    assert schedule(unix, limit=2) == [at("2027-01-11T00:00:00"), at("2027-01-18T00:00:00")]
    spring = parse_timer("cycle", "0 0 0 1 * MON")
    assert schedule(spring, limit=2) == [at("2027-02-01T00:00:00"), at("2027-03-01T00:00:00")]


def test_cron_is_evaluated_in_utc_whatever_the_zone_of_now() -> None:
    spec = parse_timer("cycle", "0 0 9 * * *")
    now = datetime(2027, 1, 6, 8, 0, tzinfo=ZoneInfo("America/New_York"))  # 13:00 UTC
    assert first_due(spec, now) == at("2027-01-07T09:00:00")


def test_cron_due_time_is_strictly_after() -> None:
    spec = parse_timer("cycle", "0 */5 * * * *")
    assert first_due(spec, at("2027-01-06T10:05:00")) == at("2027-01-06T10:10:00")
    assert next_due(spec, at("2027-01-06T10:10:00"), 1) == at("2027-01-06T10:15:00")


def test_quartz_is_converted_for_croniter() -> None:
    assert parse_timer("cycle", "0/5 0/1 * 1/1 * ? *").cron == "0/5 0/1 * 1/1 * *"
    assert parse_timer("cycle", "0 0 12 ? * 2-6").cron == "0 0 12 * * 1-5"
    assert parse_timer("cycle", "*/5 * * * *").cron == "0 */5 * * * *"


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "text", "message"),
    [
        ("duration", "PT", r"'PT' is not an ISO 8601 duration such as PT15M.*gives no number"),
        ("duration", "15 minutes", r"'15 minutes' is not an ISO 8601 duration such as PT15M"),
        ("duration", "-PT5M", r"negative; it must be zero or more"),
        ("duration", "P1.5M", r"years and months must be whole"),
        ("duration", "P1DT", r"gives no number"),
        ("duration", "", r"empty; expected an ISO 8601 duration"),
        ("date", "2027-01-01", r"is not an ISO 8601 date-time such as 2027-01-01T09:00:00Z"),
        ("date", "tomorrow", r"is not an ISO 8601 date-time"),
        ("date", "2027-13-01T09:00:00Z", r"is not an ISO 8601 date-time.*month must be in 1..12"),
        ("cycle", "R/PT0S", r"the interval must be at least one second \(PT1S\)"),
        ("cycle", "R/PT0.5S", r"the interval must be at least one second"),
        ("cycle", "R0/PT1M", r"repeats zero times"),
        ("cycle", "R3/15 minutes", r"the interval '15 minutes' is not an ISO 8601 duration"),
        ("cycle", "R3/soon/PT1M", r"the start 'soon' is not an ISO 8601 date-time"),
        ("cycle", "R/PT1H/2027-01-01T00:00:00Z", r"an end date is not supported"),
        ("cycle", "PT10M", r"write R/PT10M \(without end\) or R3/PT10M"),
        ("cycle", "0 60 * * * *", r"its minute field '60' is wrong \(out of range\)"),
        ("cycle", "0 0 25 * * ?", r"its hour field '25' is wrong"),
        ("cycle", "0 0 9 * * FOO", r"its day-of-week field 'FOO' is wrong"),
        ("cycle", "*/5 * * 13 *", r"its month field '13' is wrong"),
        ("cycle", "0 0 12 * ? * *", r"its month field '\?' is wrong"),
        ("cycle", "0 0 12 ? * * 2027", r"year field '2027' is not supported; only \*"),
        ("cycle", "0 0 12 ? * MON 2027-2030", r"year field '2027-2030' is not supported"),
        ("cycle", "0 0 12 ? * 0", r"Quartz numbers the weekdays 1 \(SUN\) to 7 \(SAT\), not 0"),
        ("cycle", "0 0 0 30 2 *", r"names no time that exists"),
        ("cycle", "H * * * *", r"hashed or random values"),
        ("cycle", "1 2 3", r"it has 3 fields; expected an ISO 8601 repeating interval"),
        ("cycle", "every hour", r"it has 2 fields"),
    ],
)
def test_refusals_say_what_is_wrong_and_what_is_accepted(
    kind: TimerKind, text: str, message: str
) -> None:
    with pytest.raises(TimerError, match=message):
        parse_timer(kind, text)


def test_cron_refusals_list_the_accepted_forms() -> None:
    with pytest.raises(TimerError) as refused:
        parse_timer("cycle", "0 60 * * * *")
    assert "R3/PT10M" in str(refused.value) and "0 0/5 * * * ?" in str(refused.value)


def test_timer_error_is_a_value_error() -> None:
    assert issubclass(TimerError, ValueError)


def test_now_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        first_due(parse_timer("duration", "PT1M"), datetime(2027, 1, 1))


# --- properties -------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(seconds=st.integers(0, 10**6), microseconds=st.sampled_from([0, 500_000, 1]))
def test_any_duration_is_due_its_length_after_now(seconds: int, microseconds: int) -> None:
    length = timedelta(seconds=seconds, microseconds=microseconds)
    spec = parse_timer("duration", isodate.duration_isoformat(length))
    assert first_due(spec, NOW) == NOW + length


@settings(max_examples=200, deadline=None)
@given(repetitions=st.integers(1, 50), seconds=st.integers(1, 10**5))
def test_a_counted_cycle_fires_exactly_that_many_times(repetitions: int, seconds: int) -> None:
    spec = parse_timer("cycle", f"R{repetitions}/PT{seconds}S")
    times = schedule(spec, limit=repetitions + 5)
    assert times == [NOW + timedelta(seconds=seconds * n) for n in range(1, repetitions + 1)]
