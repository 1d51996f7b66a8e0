"""wait_for_event never swallows a cancellation, even when the event is set in the same instant."""

from __future__ import annotations

import asyncio

from gateway.aio import wait_for_event


async def _loop_until_cancelled(event: asyncio.Event) -> None:
    while True:
        event.clear()
        await wait_for_event(event, 5.0)


async def test_a_cancellation_arriving_with_the_event_stops_the_loop() -> None:
    for _ in range(200):
        event = asyncio.Event()
        task = asyncio.create_task(_loop_until_cancelled(event))
        await asyncio.sleep(0)  # the task is now waiting on the event
        event.set()
        task.cancel()  # in the same tick as the wake-up: asyncio.wait_for on 3.11 can lose this one
        done, _ = await asyncio.wait({task}, timeout=2.0)
        assert task in done and task.cancelled()


async def test_it_reports_whether_the_event_was_set() -> None:
    event = asyncio.Event()
    assert await wait_for_event(event, 0.01) is False
    event.set()
    assert await wait_for_event(event, 0.01) is True
