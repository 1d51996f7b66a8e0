"""Small asyncio helpers the background loops share."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def wait_for_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; True if it was set.

    Not ``asyncio.wait_for(event.wait(), timeout)``: on Python 3.11 that can swallow a cancellation that
    arrives just as the event is set (the inner wait completes, and wait_for returns its result instead of
    raising), so a loop asked to stop keeps running and whoever awaits it hangs. Seen in this project's tests
    as a webhook dispatcher that never stopped. ``asyncio.timeout`` delivers the cancellation.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait until it has unwound (its ``finally`` blocks ran); None is a no-op.

    Every loop's ``stop()`` needs this, and awaiting the task matters: returning before it unwinds lets a
    caller close the connection or store the loop is still using.
    """
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def exit_with_parent(parent: int) -> None:
    """For worker processes: exit as soon as ``parent`` (the process that started them) is gone.

    A gateway killed with SIGKILL cannot stop its address-derivation workers; without this they would stay
    behind as orphans (seen after the crash tests). A daemon thread watches the parent id and ends the
    process when it is no longer ``parent`` (the orphan was re-parented). The parent's id is passed in, not
    read at start: a worker still booting when the gateway dies would otherwise take its new parent for
    the real one.
    """
    import os
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
