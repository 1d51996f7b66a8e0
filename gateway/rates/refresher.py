"""Keeps the composite's quotes fresh in the background, one independent loop per provider.

Invoice creation must never wait for an exchange, so prices are fetched ahead of time: every provider is
asked every ``interval_seconds`` (30 s), and the composite (composite.py) prices from whatever is fresh.

Each provider has its own loop and its own schedule, so a slow or banned provider never delays the others:

- success: healthy, next attempt one interval later;
- failure (any :class:`ProviderError`, or anything else an adapter lets escape: the loop never dies):
  unhealthy, with the error and its time; retried after an exponential backoff (``backoff_initial_seconds``
  doubling up to ``backoff_max_seconds``), which resets on the first success, so a provider that comes
  back is used again without a restart;
- rate limited (429/418 with Retry-After): unhealthy, and not asked again before Retry-After has passed
  (capped at ``max_retry_after_seconds``), however short the backoff would be: Binance bans clients that
  keep asking;
- partly usable (one symbol missing or priced at zero): the good quotes are used, the provider is
  reported unhealthy, and it is asked again at the normal interval, not backed off, because its other
  quotes would otherwise go stale.

Time comes from the injected clock: schedules are clock times, and the loops poll the clock at least every
``poll_seconds`` of real time, so a test's ManualClock drives them. After every attempt that brought quotes,
a :class:`RatesSnapshot` is taken, recorded in a per-asset in-memory ring (``history``) and handed to the
``on_snapshot`` hook (which may be async; the lead's store persists it; errors in it are logged, never
raised). Use either :meth:`start`/:meth:`stop` or, in tests, :meth:`refresh_due` by hand, not both.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from gateway.clock import Clock, isoformat
from gateway.money import Asset
from gateway.rates.base import AssetRate
from gateway.rates.composite import CompositeRates, RatesSnapshot
from gateway.rates.errors import ProviderError, RateLimited
from gateway.rates.quotes import QuoteBatch, RateProvider

log = structlog.get_logger("gateway.rates")

SnapshotHook = Callable[[RatesSnapshot], Awaitable[None] | None]


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    """One provider as the health view shows it."""

    name: str
    healthy: bool
    last_success_at: datetime | None
    last_error: str | None
    last_error_type: str | None
    last_error_at: datetime | None
    consecutive_failures: int
    next_attempt_at: datetime
    rate_limited_until: datetime | None

    def as_dict(self) -> dict[str, Any]:
        def when(moment: datetime | None) -> str | None:
            return isoformat(moment) if moment is not None else None

        return {
            "name": self.name,
            "healthy": self.healthy,
            "last_success_at": when(self.last_success_at),
            "last_error": self.last_error,
            "last_error_type": self.last_error_type,
            "last_error_at": when(self.last_error_at),
            "consecutive_failures": self.consecutive_failures,
            "next_attempt_at": when(self.next_attempt_at),
            "rate_limited_until": when(self.rate_limited_until),
        }


class _State:
    __slots__ = (
        "consecutive_failures",
        "healthy",
        "interval",
        "last_error",
        "last_error_at",
        "last_error_type",
        "last_success_at",
        "next_attempt_at",
        "provider",
        "rate_limited_until",
    )

    def __init__(self, provider: RateProvider, interval: float, now: datetime) -> None:
        self.provider = provider
        self.interval = interval
        self.healthy = False
        self.last_success_at: datetime | None = None
        self.last_error: str | None = None
        self.last_error_type: str | None = None
        self.last_error_at: datetime | None = None
        self.consecutive_failures = 0
        self.next_attempt_at = now
        self.rate_limited_until: datetime | None = None

    def view(self) -> ProviderHealth:
        return ProviderHealth(
            self.provider.name,
            self.healthy,
            self.last_success_at,
            self.last_error,
            self.last_error_type,
            self.last_error_at,
            self.consecutive_failures,
            self.next_attempt_at,
            self.rate_limited_until,
        )


class RateRefresher:
    def __init__(
        self,
        providers: Sequence[RateProvider],
        composite: CompositeRates,
        clock: Clock,
        *,
        interval_seconds: float = 30.0,
        intervals: Mapping[str, float] | None = None,
        backoff_initial_seconds: float = 5.0,
        backoff_max_seconds: float = 300.0,
        max_retry_after_seconds: float = 3 * 24 * 3600.0,
        poll_seconds: float = 1.0,
        history_size: int = 1000,
        on_snapshot: SnapshotHook | None = None,
    ) -> None:
        names = [p.name for p in providers]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be unique, got {names}")
        if interval_seconds <= 0 or backoff_initial_seconds <= 0 or poll_seconds <= 0:
            raise ValueError("intervals, backoff and poll period must be positive")
        self._composite = composite
        self._clock = clock
        self._backoff_initial = backoff_initial_seconds
        self._backoff_max = max(backoff_max_seconds, backoff_initial_seconds)
        self._max_retry_after = max_retry_after_seconds
        self._poll = poll_seconds
        self._on_snapshot = on_snapshot
        now = clock.now()
        overrides = dict(intervals or {})
        self._states = {p.name: _State(p, overrides.get(p.name, interval_seconds), now) for p in providers}
        self._history: dict[Asset, deque[AssetRate]] = {asset: deque(maxlen=history_size) for asset in Asset}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def composite(self) -> CompositeRates:
        return self._composite

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start one background loop per provider (idempotent)."""
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._loop(state), name=f"rates-{name}")
            for name, state in self._states.items()
        ]
        log.info("rates.refresher_started", providers=list(self._states))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    async def refresh_due(self) -> None:
        """One attempt for every provider whose next attempt is due (by hand, without :meth:`start`)."""
        now = self._clock.now()
        due = [s for s in self._states.values() if s.next_attempt_at <= now]
        await asyncio.gather(*(self._attempt(s) for s in due))

    # -- views -----------------------------------------------------------------------------------------

    def health(self) -> dict[str, ProviderHealth]:
        return {name: state.view() for name, state in self._states.items()}

    def snapshot(self) -> RatesSnapshot:
        """Current derived rates, for ``GET /v1/rates``."""
        return self._composite.snapshot(self._clock.now())

    def history(self, asset: Asset) -> tuple[AssetRate, ...]:
        """Recent distinct rates of ``asset``, oldest first (at most ``history_size``)."""
        return tuple(self._history[asset])

    # -- the loop --------------------------------------------------------------------------------------

    async def _loop(self, state: _State) -> None:
        while True:
            wait = (state.next_attempt_at - self._clock.now()).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, self._poll))
                continue
            try:
                await self._attempt(state)
            except asyncio.CancelledError:
                raise
            except Exception:  # pragma: no cover - _attempt already catches; belt and braces
                log.exception("rates.refresher_error", provider=state.provider.name)
                await asyncio.sleep(self._poll)

    async def _attempt(self, state: _State) -> None:
        name = state.provider.name
        fed: QuoteBatch | None = None
        try:
            fed = await state.provider.fetch()
        except asyncio.CancelledError:
            raise
        except ProviderError as exc:
            fed = exc.partial
            self._failed(state, exc)
        except Exception as exc:
            log.exception("rates.provider_bug", provider=name)
            self._failed(state, exc)
        else:
            self._succeeded(state)
        if fed is not None:
            self._composite.update(fed)
        self._composite.set_next_refresh(min(s.next_attempt_at for s in self._states.values()))
        if fed is not None:
            await self._publish()

    def _succeeded(self, state: _State) -> None:
        now = self._clock.now()
        if not state.healthy:
            log.info("rates.provider_healthy", provider=state.provider.name)
        state.healthy = True
        state.last_success_at = now
        state.consecutive_failures = 0
        state.rate_limited_until = None
        state.next_attempt_at = now + timedelta(seconds=state.interval)

    def _failed(self, state: _State, exc: Exception) -> None:
        now = self._clock.now()
        state.healthy = False
        state.last_error = str(exc)
        state.last_error_type = type(exc).__name__
        state.last_error_at = now
        state.consecutive_failures += 1
        delay = min(self._backoff_initial * 2 ** (state.consecutive_failures - 1), self._backoff_max)
        if isinstance(exc, ProviderError) and exc.partial is not None:
            delay = state.interval  # still answering: keep its good quotes fresh
        if isinstance(exc, RateLimited) and exc.retry_after_seconds is not None:
            wait = min(exc.retry_after_seconds, self._max_retry_after)
            state.rate_limited_until = now + timedelta(seconds=wait)
            delay = max(delay, wait)
        state.next_attempt_at = now + timedelta(seconds=delay)
        log.warning(
            "rates.provider_failed",
            provider=state.provider.name,
            error_type=state.last_error_type,
            error=state.last_error,
            failures=state.consecutive_failures,
            next_attempt_at=isoformat(state.next_attempt_at),
        )

    async def _publish(self) -> None:
        snapshot = self._composite.snapshot(self._clock.now())
        for asset, rate in snapshot.rates.items():
            ring = self._history[asset]
            if not ring or ring[-1] != rate:
                ring.append(rate)
        if self._on_snapshot is None:
            return
        try:
            result = self._on_snapshot(snapshot)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("rates.snapshot_hook_failed")
