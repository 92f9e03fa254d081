"""Two engine replicas, one of them killed with -9 again and again while instances wait: on
timers that are coming due in bursts, and on messages that arrive on the `<ns>.messages`
exchange (some before their instance waits, some after, some twice). Every timer fires
exactly once and every message takes effect exactly once, whichever engine is left to do it;
nothing is lost, nothing is applied twice."""

from __future__ import annotations

import asyncio
import subprocess
import time

import aio_pika
import pytest

from orchestrator.broker.topology import Topology
from tests.faults.workload import MESSAGE, TIMER, Workload

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

KILLS = 5

TIMER_INSTANCES = 500
#: Instances whose timers come due together; one kill per burst.
BURST = TIMER_INSTANCES // KILLS
TIMER_RATE = 50.0
#: A burst's instances start over BURST / TIMER_RATE = 2 s; its timers are all due this long
#: after the last of them started (step1 is done by then).
TIMER_WAIT_S = 1.5
#: Bursts come due this far apart: room for a kill and a new engine (an engine takes over a
#: second to start on a small machine) before the next burst, which must find two running.
BURST_GAP_S = 4.0
#: From a moment before a burst is due, the test looks this often for an engine inside a
#: timer pass, for at most CATCH_S; then it kills the oldest engine instead.
CATCH_POLL_S = 0.002
CATCH_EARLY_S = 0.05
CATCH_S = 0.5


def burst_due(i: int) -> float:
    """Seconds after the first start when instance i's timer is due."""
    return (i // BURST) * BURST_GAP_S + BURST / TIMER_RATE + TIMER_WAIT_S


@pytest.mark.timeout(120)
async def test_engine_killed_while_timers_are_due(workload: Workload) -> None:
    # 500 instances in 5 bursts of 100 whose timers (a date, the `dueAt` variable) are all
    # due at the same instant, BURST_GAP_S apart: both engines fire each burst in passes that share
    # the due rows (SKIP LOCKED), and one of them is killed just as a burst comes due.
    workload.configure(
        "kill -9 engine while timers are due",
        count=TIMER_INSTANCES,
        shape=TIMER,
        due_in=burst_due,
    )
    workload.engine()
    workload.engine()
    await workload.deploy()
    await workload.engines_consuming(2)
    workload.worker()
    workload.worker()
    workload.start(rate=TIMER_RATE)

    amid: list[
        tuple[int, int]
    ] = []  # (timers due and unfired, still waiting) right after each kill
    in_pass = 0
    for burst in range(KILLS):
        due = workload.began + burst_due(burst * BURST)
        await asyncio.sleep(max(due - CATCH_EARLY_S - time.monotonic(), 0))
        victim = await engine_in_a_timer_pass(workload, until=due + CATCH_S)
        if victim is None:
            victim = workload.live(workload.engines)[0]  # the oldest: alternates between two
        else:
            in_pass += 1
        await workload.kill(victim, "kill -9 engine")
        amid.append(await workload.timers_due())
        workload.engine()
        # The next burst is due with two engines running again, one of them the next victim.
        await workload.engines_consuming(2)

    verdict = await workload.finish(exact_reports=False)
    # Per burst, how late its last timer fired: after its due time, or after the instance
    # reached the timer if that was later (a kill can delay step1 past the due time).
    late = await workload.db.fetch(
        """
        SELECT round(max(extract(epoch FROM f.at - greatest(
                   (f.detail->>'due_at')::timestamptz, s.at))), 2) AS late
        FROM history f JOIN history s ON s.instance_id = f.instance_id
             AND s.kind = 'task_completed' AND s.node_id = 'step1'
        WHERE f.kind = 'timer_fired'
        GROUP BY f.detail->>'due_at' ORDER BY f.detail->>'due_at'
        """
    )
    print(
        f"kills inside a timer pass: {in_pass} of {KILLS}; timers (due and unfired, still "
        f"waiting) right after each kill: {amid}; each burst's last timer fired "
        f"{[float(row['late']) for row in late]} s after due"
    )
    assert verdict.waits == TIMER_INSTANCES, verdict
    # The kills landed while timers were due: most of them inside a firing transaction.
    assert in_pass >= 3, (in_pass, amid)


async def engine_in_a_timer_pass(
    workload: Workload, *, until: float
) -> subprocess.Popen[bytes] | None:
    """A live engine seen inside a timer pass before `until` (monotonic), or None."""
    while time.monotonic() < until:
        firing = await workload.firing_timers()
        for proc in workload.live(workload.engines):
            if proc.pid in firing:
                return proc
        await asyncio.sleep(CATCH_POLL_S)
    return None


MESSAGE_INSTANCES = 300
MESSAGE_RATE = 30.0
#: Instances with an even i get their message as they start (buffered: their step1 runs
#: first), odd ones once their subscription is open (correlated directly).
#: Every DUPLICATE_EVERY-th message is published twice: half right away, half later.
DUPLICATE_EVERY = 5
DUPLICATE_LATER_S = 1.5
POLL_S = 0.05


async def publish_messages(workload: Workload) -> None:
    """One message per instance to `<ns>.messages`, persistent and confirmed, with the
    instance's message id: even i as the instance starts, odd i once it waits; every
    DUPLICATE_EVERY-th again (the same message id)."""
    topology = Topology(workload.settings.namespace)
    connection = await aio_pika.connect(workload.settings.amqp_url)
    copies: list[asyncio.Task[None]] = []
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(topology.messages_exchange, ensure=False)

        async def publish(i: int) -> None:
            message = aio_pika.Message(
                workload.message_body(i),
                message_id=workload.message_id(i),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await exchange.publish(message, routing_key="")
            workload.published(i)

        async def again(i: int) -> None:
            later = (i // DUPLICATE_EVERY) % 2 == 1
            await asyncio.sleep(DUPLICATE_LATER_S if later else 0)
            await publish(i)
            workload.fault("duplicate message")

        async def first(i: int) -> None:
            await publish(i)
            if i % DUPLICATE_EVERY == 0:
                copies.append(asyncio.create_task(again(i)))

        async def early() -> None:
            loop = asyncio.get_running_loop()
            for i in range(0, workload.count, 2):
                due = workload.began + i / MESSAGE_RATE
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                await first(i)

        async def late() -> None:
            waiting = set(range(1, workload.count, 2))
            while waiting:
                for i in sorted(await workload.waiting_for_messages() & waiting):
                    await first(i)
                    waiting.discard(i)
                await asyncio.sleep(POLL_S)

        await asyncio.gather(early(), late())
        await asyncio.gather(*copies)


@pytest.mark.timeout(120)
async def test_engine_killed_while_messages_arrive(workload: Workload) -> None:
    workload.configure(
        "kill -9 engine while messages arrive", count=MESSAGE_INSTANCES, shape=MESSAGE
    )
    workload.engine()
    workload.engine()
    await workload.deploy()
    await workload.engines_consuming(2)
    workload.worker()
    workload.worker()
    workload.start(rate=MESSAGE_RATE)  # 10 s of arrivals, the messages with them
    publishing = asyncio.create_task(publish_messages(workload))

    amid: list[tuple[int, int]] = []
    try:
        for _ in range(KILLS):
            await workload.progressed(by=70)
            amid.append(await workload.messages_in_flight())
            victim = workload.live(workload.engines)[0]  # the oldest: alternates between two
            await workload.kill(victim, "kill -9 engine")
            workload.engine()
            await workload.engines_consuming(2)
        await asyncio.wait_for(asyncio.shield(publishing), timeout=60)
    finally:
        if not publishing.done():
            publishing.cancel()

    verdict = await workload.finish(exact_reports=False)
    buffered = verdict.counter("messages_buffered")
    print(
        f"(buffered, waiting) just before each kill: {amid}; buffered first {buffered}, "
        f"correlated {verdict.counter('messages_correlated')}, duplicates "
        f"{verdict.message_duplicates} ({verdict.messages_republished} published again)"
    )
    # Both ways in happened: messages kept until their instance waited, and messages that
    # found their instance waiting.
    assert 0 < buffered < MESSAGE_INSTANCES, verdict
    assert verdict.messages_republished == len(range(0, MESSAGE_INSTANCES, DUPLICATE_EVERY))
