"""Small asyncio helpers the background loops share."""

from __future__ import annotations

import asyncio


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
