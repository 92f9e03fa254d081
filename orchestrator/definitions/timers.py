"""BPMN timer definitions: what `timeDuration`, `timeDate` and `timeCycle` say, and when they fire.

Pure: no I/O and no clock reads, "now" is always an argument. Every datetime this module
returns is timezone-aware and in UTC.

Accepted forms (as Camunda Modeler writes them):

- duration: an ISO 8601 duration, `PT15M`, `P1DT2H`, `PT0.5S`, `P2W`; years and months
  (`P1M`, `P1Y2M`) are calendar lengths: `P1M` from 31 January is the end of February.
  Never negative.
- date: an ISO 8601 date-time, `2027-01-01T09:00:00Z` or with an offset
  `2027-01-01T09:00:00+02:00`. A date-time without a zone is taken as UTC.
- cycle: an ISO 8601 repeating interval, `R3/PT10M` (three times), `R/PT1H` (without end),
  `R5/2027-01-01T09:00:00Z/PT1H` (from a start; a start without a zone is UTC); the interval
  is at least one second. Or a cron expression, evaluated in UTC:
  - 5 fields, `minute hour day month weekday` (`*/5 * * * *`): Unix cron, where a day that
    matches either the day of the month or the weekday fires;
  - 6 fields, seconds first (Camunda 8 / Spring, `0 0 9 * * MON-FRI`; Quartz,
    `0 0/5 * * * ?`): a day must match both fields;
  - 7 fields, Quartz with a year (`0/5 0/1 * 1/1 * ? *`): only the year `*` is accepted.
  An expression with `?` or a year field is Quartz's, as Camunda 7 files carry it: there the
  weekday numbers run 1 (SUN) to 7 (SAT) and `6L` is the last Friday; elsewhere 0 or 7 is
  SUN. Names (`MON-FRI`) mean the same everywhere. `@hourly`, `@daily`, `@midnight`,
  `@weekly`, `@monthly`, `@yearly` and `@annually` are accepted too.

A value may also be an expression (`${reminderDelay}`, `#{...}` or FEEL `=reminderDelay`):
`is_expression` tells, and the caller evaluates it and hands the resulting text to
`parse_timer`. A result that is not text is refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Literal, TypeAlias

import isodate
from croniter import CroniterError, croniter
from dateutil.relativedelta import relativedelta

TimerKind = Literal["duration", "date", "cycle"]

# What a BPMN timerEventDefinition's child element is called, and which kind it is.
BPMN_ELEMENTS: Mapping[str, TimerKind] = {
    "timeDuration": "duration",
    "timeDate": "date",
    "timeCycle": "cycle",
}

# A length: exact (timedelta) or with years and months, added by the calendar (relativedelta).
Length: TypeAlias = timedelta | relativedelta

DURATION_FORMS = "an ISO 8601 duration such as PT15M, P1DT2H, PT0.5S, P2W or P1M"
DATE_FORMS = (
    "an ISO 8601 date-time such as 2027-01-01T09:00:00Z or 2027-01-01T09:00:00+02:00 "
    "(no zone means UTC)"
)
CYCLE_FORMS = (
    "an ISO 8601 repeating interval such as R3/PT10M, R/PT1H or R5/2027-01-01T09:00:00Z/PT1H, "
    "or a cron expression: 5 fields (*/5 * * * *), 6 with seconds first (0 0 9 * * MON-FRI, "
    "0 0/5 * * * ?) or Quartz's 7 with the year * (0/5 0/1 * 1/1 * ? *)"
)
MIN_INTERVAL = timedelta(seconds=1)


class TimerError(ValueError):
    """A timer definition that cannot be used: the message says what is wrong and what is
    accepted."""


@dataclass(frozen=True)
class TimerSpec:
    """A parsed literal timer definition.

    duration: `duration` is the length. date: `date` is the moment (aware; UTC when the
    text had no zone). cycle: either `interval` with `repetitions` (None: without end) and
    an optional `start`, or `cron`, a 6-field expression, seconds first, in croniter's
    syntax (`cron_day_or`: a day fires when it matches the day of the month *or* the
    weekday, as in Unix cron; otherwise it must match both).
    """

    kind: TimerKind
    text: str
    duration: Length | None = None
    date: datetime | None = None
    repetitions: int | None = None
    interval: Length | None = None
    start: datetime | None = None
    cron: str | None = None
    cron_day_or: bool = True


def is_expression(text: str) -> bool:
    """Whether a timer value is an expression to evaluate (`${...}`, `#{...}`, `=...`)
    rather than a literal definition."""
    value = text.strip()
    if value.startswith("="):
        return True
    return value.startswith(("${", "#{")) and value.endswith("}")


def parse_timer(kind: TimerKind, text: str) -> TimerSpec:
    """Parse a literal timer definition of the given kind; raises TimerError."""
    if not isinstance(text, str):
        raise TimerError(
            f"a {kind} timer's value must be text, not {type(text).__name__} ({text!r}); "
            f"expected {_forms(kind)}"
        )
    value = text.strip()
    if not value:
        raise TimerError(f"a {kind} timer is empty; expected {_forms(kind)}")
    if is_expression(value):
        raise TimerError(
            f"{kind} timer {value!r} is an expression: evaluate it first, it must give "
            f"{_forms(kind)}"
        )
    if kind == "duration":
        return TimerSpec(kind, value, duration=_parse_length(value, "duration", DURATION_FORMS))
    if kind == "date":
        return TimerSpec(kind, value, date=_parse_date(value, "date", DATE_FORMS))
    if kind == "cycle":
        if _ISO_CYCLE.match(value):
            return _parse_iso_cycle(value)
        return _parse_cron(value)
    raise TimerError(f"unknown timer kind {kind!r}; expected one of duration, date, cycle")


def first_due(spec: TimerSpec, now: datetime) -> datetime | None:
    """When a timer created at `now` first fires (UTC), or None when it never does.

    A duration is due `now` plus its length; a date at that date, even when it has passed
    (the caller fires it at once); an interval cycle one interval after `now`, or at its
    start when that is still to come; a cron cycle at the first time it names after `now`. A cycle
    with a start that has passed fires at the first slot (start + k * interval) not before
    `now`; the slots that passed count against its repetitions.
    """
    now = _utc(now, "now")
    if spec.kind == "duration":
        assert spec.duration is not None
        return _add(now, spec.duration)
    if spec.kind == "date":
        assert spec.date is not None
        return spec.date.astimezone(UTC)
    if spec.cron is not None:
        return _cron_next(spec, now)
    if spec.start is not None:
        return _slot_from(spec, now, after=False)
    assert spec.interval is not None
    if spec.repetitions == 0:
        return None
    return _add(now, spec.interval)


def next_due(spec: TimerSpec, previous_due: datetime, fired: int) -> datetime | None:
    """For a cycle, when it is due after its `fired`-th firing, which was due at
    `previous_due` (the time this module returned, not the moment it really ran); None
    when its repetitions are used up. A duration or a date fires once: None.

    Without a start each due time is the previous one plus the interval (`P1M` from
    31 January: 28 February, then 28 March). With a start the slots are start + k *
    interval, and the repetitions count slots from the start (`fired` is not needed). A
    cron cycle has no repetitions: the next time it names after `previous_due`.
    """
    previous_due = _utc(previous_due, "previous_due")
    if spec.kind != "cycle":
        return None
    if spec.cron is not None:
        return _cron_next(spec, previous_due)
    if spec.start is not None:
        return _slot_from(spec, previous_due, after=True)
    assert spec.interval is not None
    if spec.repetitions is not None and fired >= spec.repetitions:
        return None
    return _add(previous_due, spec.interval)


# --- ISO 8601 ---------------------------------------------------------------------------

_ISO_CYCLE = re.compile(r"R(\d*)/", re.IGNORECASE)
# A fraction of a year or a month (P1.5M) cannot be added by the calendar: isodate drops it.
_FRACTIONAL_CALENDAR = re.compile(r"[.,]\d*[YM]", re.IGNORECASE)


def _forms(kind: str) -> str:
    return {"duration": DURATION_FORMS, "date": DATE_FORMS, "cycle": CYCLE_FORMS}.get(
        kind, "duration, date or cycle"
    )


def _parse_length(value: str, what: str, forms: str) -> Length:
    refused = f"{what} {value!r} is not {forms}"
    upper = value.upper()
    if not re.search(r"\d", value) or upper.endswith("T"):
        raise TimerError(f"{refused}: it gives no number of any unit")
    date_part = upper.split("T", 1)[0]
    if _FRACTIONAL_CALENDAR.search(date_part):
        raise TimerError(f"{refused}: years and months must be whole")
    try:
        parsed: object = isodate.parse_duration(value)
    except (ValueError, TypeError, ArithmeticError) as error:
        raise TimerError(f"{refused}: {error}") from None
    if isinstance(parsed, timedelta):
        if parsed < timedelta(0):
            raise TimerError(f"{what} {value!r} is negative; it must be zero or more")
        return parsed
    return _calendar_length(parsed, value, what)


def _calendar_length(parsed: object, value: str, what: str) -> Length:
    """An isodate Duration (years and months besides an exact part) as a relativedelta."""
    years = Decimal(str(getattr(parsed, "years", 0)))
    months = Decimal(str(getattr(parsed, "months", 0)))
    exact = getattr(parsed, "tdelta", timedelta(0))
    if not isinstance(exact, timedelta):  # pragma: no cover - isodate always gives one
        raise TimerError(f"{what} {value!r} could not be read")
    if years < 0 or months < 0 or exact < timedelta(0):
        raise TimerError(f"{what} {value!r} is negative; it must be zero or more")
    if not years and not months:
        return exact
    return relativedelta(
        years=int(years),
        months=int(months),
        days=exact.days,
        seconds=exact.seconds,
        microseconds=exact.microseconds,
    )


def _parse_date(value: str, what: str, forms: str) -> datetime:
    try:
        parsed: object = isodate.parse_datetime(value)
    except (ValueError, TypeError, ArithmeticError) as error:
        raise TimerError(f"{what} {value!r} is not {forms}: {error}") from None
    if not isinstance(parsed, datetime):  # pragma: no cover - isodate always gives one
        raise TimerError(f"{what} {value!r} is not {forms}")
    offset = parsed.utcoffset()
    if offset is None:
        return parsed.replace(tzinfo=UTC)
    # isodate's own tzinfo classes replaced by the standard library's.
    return parsed.replace(tzinfo=UTC if not offset else timezone(offset))


def _parse_iso_cycle(value: str) -> TimerSpec:
    parts = value.split("/")
    count = parts[0][1:]
    repetitions = int(count) if count else None
    if repetitions == 0:
        raise TimerError(f"cycle {value!r} repeats zero times, so never fires; use R1 or more")
    if len(parts) == 2:
        start = None
        interval_text = parts[1]
    elif len(parts) == 3 and not parts[1].upper().startswith("P"):
        start = _parse_date(parts[1], f"cycle {value!r}: the start", DATE_FORMS)
        interval_text = parts[2]
    else:
        raise TimerError(
            f"cycle {value!r} is not accepted: give R<n>/<interval> or "
            f"R<n>/<start>/<interval> (an end date is not supported); expected {CYCLE_FORMS}"
        )
    interval = _parse_length(interval_text, f"cycle {value!r}: the interval", DURATION_FORMS)
    if isinstance(interval, timedelta) and interval < MIN_INTERVAL:
        raise TimerError(
            f"cycle {value!r} repeats every {interval_text}; the interval must be at least "
            f"one second (PT1S)"
        )
    return TimerSpec(
        "cycle", value, repetitions=repetitions, interval=interval, start=start, cron=None
    )


# --- cron -------------------------------------------------------------------------------

_ALIASES = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * SUN",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
_DAY_OF_MONTH, _DAY_OF_WEEK = 3, 5
_FIELD_NAMES = ("second", "minute", "hour", "day-of-month", "month", "day-of-week")
# Any fixed moment: an expression that names no time after it names none at all.
_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)
# croniter's own extensions (hashed `H`, random `R`) are not cron as BPMN files write it.
_HASHED = re.compile(r"[HR](\(\d+-\d+\))?(/\d+)?", re.IGNORECASE)
_LAST_WEEKDAY = re.compile(r"(\d+)L", re.IGNORECASE)
_WEEKDAY_NUMBER = re.compile(r"(?<![/#\d])\d+")


def _parse_cron(value: str) -> TimerSpec:
    refused = f"cycle {value!r} is not accepted"
    fields = _ALIASES.get(value.lower(), value).split()
    if len(fields) == 5:
        fields.insert(0, "0")  # Unix cron has no seconds: at second 0
        day_or = True
    elif len(fields) in (6, 7):
        day_or = False
    elif value.upper().startswith("P"):
        raise TimerError(
            f"{refused}: a cycle says how often it repeats; write R/{value} (without end) "
            f"or R3/{value} (three times)"
        )
    else:
        raise TimerError(f"{refused}: it has {len(fields)} fields; expected {CYCLE_FORMS}")
    quartz = len(fields) == 7 or "?" in (fields[_DAY_OF_MONTH], fields[_DAY_OF_WEEK])
    if len(fields) == 7:
        if fields[6] != "*":
            raise TimerError(
                f"{refused}: its year field {fields[6]!r} is not supported; only * "
                f"(every year) is, or leave the seventh field out"
            )
        del fields[6]
    for index in (_DAY_OF_MONTH, _DAY_OF_WEEK):
        if fields[index] == "?":
            fields[index] = "*"
    if any(_HASHED.fullmatch(item) for field in fields for item in field.split(",")):
        raise TimerError(f"{refused}: H and R (hashed or random values) are not cron fields")
    fields[_DAY_OF_WEEK] = _weekdays(fields[_DAY_OF_WEEK], quartz, refused)
    cron = " ".join(fields)
    try:
        croniter.expand(cron, second_at_beginning=True)
    except (CroniterError, ValueError, TypeError) as error:
        raise TimerError(
            f"{refused}: {_cron_fault(fields, error)}; expected {CYCLE_FORMS}"
        ) from None
    try:
        croniter(cron, _REFERENCE, day_or=day_or, second_at_beginning=True).get_next(datetime)
    except CroniterError:
        raise TimerError(f"{refused}: it names no time that exists (such as 30 February)") from None
    return TimerSpec("cycle", value, cron=cron, cron_day_or=day_or)


def _weekdays(field: str, quartz: bool, refused: str) -> str:
    """The weekday field in croniter's terms: Quartz numbers SUN..SAT 1..7 and writes the
    last Friday `6L`; croniter numbers them 0..6 and writes `L5`."""

    def number(text: str) -> str:
        if not quartz:
            return text
        day = int(text)
        if not 1 <= day <= 7:
            raise TimerError(
                f"{refused}: Quartz numbers the weekdays 1 (SUN) to 7 (SAT), not {day}; "
                f"names (MON-FRI) are clearer"
            )
        return str(day - 1)

    items = []
    for item in field.split(","):
        last = _LAST_WEEKDAY.fullmatch(item)
        if last:
            items.append("L" + number(last.group(1)))
        else:
            items.append(_WEEKDAY_NUMBER.sub(lambda m: number(m.group(0)), item))
    return ",".join(items)


def _cron_fault(fields: list[str], error: Exception) -> str:
    """Which field croniter refused (each is tried alone among stars), and why."""
    for index, field in enumerate(fields):
        alone = ["*"] * len(fields)
        alone[index] = field
        try:
            croniter.expand(" ".join(alone), second_at_beginning=True)
        except (CroniterError, ValueError, TypeError) as field_error:
            return f"its {_FIELD_NAMES[index]} field {field!r} is wrong ({_reason(field_error)})"
    return _reason(error)


def _reason(error: Exception) -> str:
    # croniter quotes the expression reordered (seconds last) and says "is not acceptable".
    reason = re.sub(r"^\[[^\]]*\]\s*", "", str(error))
    reason = re.sub(r"^is not acceptable[.,]?\s*", "", reason).strip()
    return reason or "not a number, range, step or name it knows"


def _cron_next(spec: TimerSpec, after: datetime) -> datetime:
    assert spec.cron is not None
    try:
        schedule = croniter(spec.cron, after, day_or=spec.cron_day_or, second_at_beginning=True)
        due = schedule.get_next(datetime)
    except CroniterError as error:
        raise TimerError(
            f"cycle {spec.text!r} names no time after {after.isoformat()}: {error}"
        ) from None
    return due.astimezone(UTC)


# --- arithmetic -------------------------------------------------------------------------


def _utc(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got {moment!r}")
    return moment.astimezone(UTC)


def _add(moment: datetime, length: Length, times: int = 1) -> datetime:
    """`moment` plus `times` lengths; in UTC, so exact lengths are exact whatever the zone."""
    return (moment + length * times).astimezone(UTC)


def _slot(spec: TimerSpec, index: int) -> datetime:
    assert spec.start is not None and spec.interval is not None
    # In the start's own offset: P1M from 31 January 23:00-05:00 is 28 February 23:00-05:00.
    return (spec.start + spec.interval * index).astimezone(UTC)


def _slot_from(spec: TimerSpec, moment: datetime, *, after: bool) -> datetime | None:
    """The first slot of a cycle with a start that is not before `moment` (after: strictly
    after it); None when that slot is past the repetitions."""
    assert spec.start is not None and spec.interval is not None
    index = _slot_estimate(spec, moment)
    while _slot(spec, index) < moment or (after and _slot(spec, index) == moment):
        index += 1
    if spec.repetitions is not None and index >= spec.repetitions:
        return None
    return _slot(spec, index)


def _slot_estimate(spec: TimerSpec, moment: datetime) -> int:
    """An index whose slot is not after `moment` (0 when the start is), close below it."""
    assert spec.start is not None and spec.interval is not None
    if moment <= spec.start:
        return 0
    step = spec.interval
    if isinstance(step, relativedelta):
        # The longest a calendar step can be: a year is at most 366 days, a month 31.
        step = timedelta(
            days=step.years * 366 + step.months * 31 + step.days,
            hours=step.hours,
            minutes=step.minutes,
            seconds=step.seconds,
            microseconds=step.microseconds,
        )
    return (moment - spec.start) // step
