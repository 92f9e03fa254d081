"""Connections cut, refused and slowed by TCP proxies the test owns: between the workers and
RabbitMQ, and between the engines and both RabbitMQ and PostgreSQL."""

from __future__ import annotations

import time

import pytest

from tests.faults.workload import Workload, cpu_seconds
from tests.support.harness import wait_until
from tests.support.proxy import Proxies, TcpProxy

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

#: An engine waiting for its database retries with backoff; spinning would use a whole core.
MAX_CPU_SHARE_WHILE_DATABASE_AWAY = 0.25


async def outage(workload: Workload, proxy: TcpProxy, seconds: float) -> None:
    """The service behind `proxy` is gone for `seconds`: connections cut, new ones refused."""
    proxy.cut()
    proxy.block(seconds)
    workload.fault(f"{proxy.name} outage {seconds:g} s")

    async def over() -> bool:
        return not proxy.blocked

    await wait_until(over, timeout=seconds + 5, what=f"the {proxy.name} outage to end")


def cut(workload: Workload, *proxies: TcpProxy) -> None:
    for proxy in proxies:
        assert proxy.cut() >= 1, f"{proxy.name}: no connection to cut"
        workload.fault(f"{proxy.name} cut")


def delay(workload: Workload, ms: float, *proxies: TcpProxy) -> None:
    for proxy in proxies:
        proxy.delay(ms)
        if ms:
            workload.fault(f"{proxy.name} +{ms:g} ms")


@pytest.mark.timeout(150)
async def test_worker_connections_to_rabbitmq_cut_and_delayed(
    workload: Workload, proxies: Proxies
) -> None:
    workload.configure("TCP proxy: workers <-> RabbitMQ", count=250)
    amqp = await proxies.to(workload.settings.amqp_url, "amqp")
    workload.engine()
    await workload.deploy()
    for _ in range(2):
        workload.worker(ORCH_AMQP_URL=amqp.url(workload.settings.amqp_url))
    await workload.consuming(2)  # a cut while a worker starts up is another story (below)
    workload.start(rate=40)

    await workload.progressed(by=50)
    cut(workload, amqp)
    await workload.progressed(by=50)
    delay(workload, 150, amqp)
    await workload.progressed(by=50)
    cut(workload, amqp)
    await workload.progressed(by=50)
    await outage(workload, amqp, 2)
    delay(workload, 0, amqp)
    await workload.progressed(by=50)
    cut(workload, amqp)

    await workload.finish()
    # The workers came back after every cut (finish() checked they were still there).
    assert amqp.counters.connections >= amqp.counters.cuts + 2, amqp.counters


@pytest.mark.timeout(60)
async def test_worker_survives_a_cut_while_it_starts(workload: Workload, proxies: Proxies) -> None:
    workload.configure("TCP proxy: cut while a worker subscribes", count=0)
    amqp = await proxies.to(workload.settings.amqp_url, "amqp")
    workload.engine()
    await workload.deploy()
    amqp.delay(150)  # every broker round trip takes 0.3 s: start() takes seconds
    worker = workload.worker(ORCH_AMQP_URL=amqp.url(workload.settings.amqp_url))
    try:

        async def first_topic_consumed() -> bool:
            return (await workload.consumers())[0] == 1

        await wait_until(first_topic_consumed, timeout=30, what="the worker's first consumer")
        assert (await workload.consumers())[1:] == [0, 0], "start() finished before the cut"
        cut(workload, amqp)
        amqp.delay(0)
        await workload.consuming(1, timeout=10)
        assert worker.poll() is None, workload.processes.logs()
    finally:
        worker.kill()  # it may not answer SIGTERM any more (see the reason)


@pytest.mark.timeout(150)
async def test_engine_connections_to_both_services_cut_and_delayed(
    workload: Workload, proxies: Proxies
) -> None:
    workload.configure("TCP proxy: engines <-> RabbitMQ, PostgreSQL", count=250)
    settings = workload.settings
    amqp = await proxies.to(settings.amqp_url, "amqp")
    pg = await proxies.to(settings.database_url, "pg")
    env = {"ORCH_AMQP_URL": amqp.url(settings.amqp_url)}
    env["ORCH_DATABASE_URL"] = pg.url(settings.database_url)
    engines = [workload.engine(**env), workload.engine(**env)]
    await workload.deploy()
    for _ in range(2):
        workload.worker()
    workload.start(rate=40)

    await workload.progressed(by=40)
    cut(workload, pg)
    await workload.progressed(by=40)
    cut(workload, amqp)
    await workload.progressed(by=40)
    delay(workload, 100, amqp, pg)
    await workload.progressed(by=40)
    cut(workload, amqp, pg)
    await workload.progressed(by=40)
    delay(workload, 0, amqp, pg)
    cpu_before = [cpu_seconds(engine.pid) for engine in engines]
    began = time.monotonic()
    await outage(workload, pg, 3)
    away = time.monotonic() - began
    cpu_share = [
        (cpu_seconds(engine.pid) - before) / away
        for engine, before in zip(engines, cpu_before, strict=True)
    ]
    await workload.progressed(by=40)
    await outage(workload, amqp, 2)

    await workload.finish(exact_reports=False)
    # While the database was away the engines waited with backoff instead of spinning.
    assert max(cpu_share) < MAX_CPU_SHARE_WHILE_DATABASE_AWAY, cpu_share
    assert pg.counters.refused >= 1 and amqp.counters.refused >= 1, (pg.counters, amqp.counters)
