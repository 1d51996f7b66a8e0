"""``CryptoCityClient``: the merchant API v1 as typed async methods.

One method per endpoint, each returning a model from :mod:`merchants.sdk.models` and raising the
exceptions of :mod:`merchants.sdk.errors`. List methods return one page; ``iter_*`` methods follow
``next_starting_after`` for you. Create calls get an ``Idempotency-Key`` (a fresh uuid4 unless you pass
your own, e.g. derived from your order id) that is reused on every retry of that call, so a timeout never
leaves you guessing whether the invoice exists: call again with the same key.

::

    async with CryptoCityClient("http://127.0.0.1:8080", api_key) as client:
        invoice = await client.create_invoice("12500.00", order_id="A-1001")
        print(invoice.checkout_url)
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Final, Literal, TypeVar
from urllib.parse import quote

import aiohttp
from pydantic import BaseModel, ValidationError

from merchants.sdk.errors import InvalidResponse
from merchants.sdk.http import Answer, Clock, Requester, RetryPolicy, Sleep
from merchants.sdk.models import (
    Balance,
    CreateInvoiceParams,
    CreateWebhookEndpointParams,
    Event,
    EventList,
    Invoice,
    InvoiceList,
    LedgerEntry,
    LedgerPage,
    PaymentList,
    RatesView,
    RedeliverParams,
    RotateSecretParams,
    UpdateWebhookEndpointParams,
    WebhookDeliveryList,
    WebhookEndpoint,
    WebhookEndpointList,
)

USER_AGENT: Final = "cryptocity-python-sdk/0.1"
M = TypeVar("M", bound=BaseModel)
# Which fields a request body leaves out: None-valued ones (creates), never-set ones (PATCH), or none.
Omit = Literal["none", "unset", "nothing"]


class _Unset:
    """Marks a PATCH field as "leave unchanged", distinct from None ("clear it")."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


def _segment(value: str) -> str:
    """An id as one path segment: an id with a slash in it must not reach another route."""
    return quote(value, safe="")


def _query(**values: Any) -> dict[str, str]:
    """Query parameters without the unset ones; a datetime as RFC 3339 (it must carry a zone)."""
    return {
        name: value.isoformat() if isinstance(value, datetime) else str(value)
        for name, value in values.items()
        if value is not None
    }


class CryptoCityClient:
    """An async client for one merchant's API key. Use it as an async context manager, or ``close()`` it.

    ``session``: an aiohttp session to share (the client then never closes it). ``max_retries``: extra
    attempts for 503s and safe connection failures (0 disables retries). ``sleep`` and ``clock`` are
    injectable so tests run the retry schedule instantly.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        session: aiohttp.ClientSession | None = None,
        max_retries: int = 3,
        max_retry_delay: float = 30.0,
        backoff_seconds: float = 0.5,
        timeout_seconds: float = 30.0,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        user_agent: str = USER_AGENT,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries cannot be negative")
        self._http = Requester(
            base_url,
            api_key,
            session=session,
            policy=RetryPolicy(max_retries, backoff_seconds, max_retry_delay),
            timeout_seconds=timeout_seconds,
            sleep=sleep,
            clock=clock,
            user_agent=user_agent,
        )

    async def __aenter__(self) -> CryptoCityClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.close()

    # --- plumbing -------------------------------------------------------------------------------------

    async def _call(
        self,
        model: type[M],
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: BaseModel | None = None,
        idempotency_key: str | None = None,
        omit: Omit = "none",
    ) -> M:
        answer = await self._send(method, path, params, body, idempotency_key, omit)
        return _parse(model, answer)

    async def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        body: BaseModel | None = None,
        idempotency_key: str | None = None,
        omit: Omit = "none",
    ) -> Answer:
        # Serialised once: every retry sends the same bytes, which Idempotency-Key replays require.
        raw = None
        if body is not None:
            raw = body.model_dump_json(exclude_none=omit == "none", exclude_unset=omit == "unset").encode()
        return await self._http.request(
            method, path, params=params, body=raw, idempotency_key=idempotency_key
        )

    # --- invoices -------------------------------------------------------------------------------------

    async def create_invoice(
        self,
        amount: str | Decimal | int,
        *,
        currency: str = "KZT",
        assets: list[str] | None = None,
        order_id: str | None = None,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        expires_in: int | None = None,
        redirect_url: str | None = None,
        idempotency_key: str | None = None,
    ) -> Invoice:
        """``POST /v1/invoices``: a tenge-priced invoice with a locked quote and a fresh address per asset.

        Pass ``idempotency_key`` derived from your own order to make "create" safe to repeat across
        restarts of your process, not only across this call's retries.
        """
        params = CreateInvoiceParams.model_validate(
            {
                "amount": amount,
                "currency": currency,
                "assets": assets,
                "order_id": order_id,
                "description": description,
                "metadata": metadata,
                "expires_in": expires_in,
                "redirect_url": redirect_url,
            }
        )
        key = idempotency_key or str(uuid.uuid4())
        return await self._call(Invoice, "POST", "/v1/invoices", body=params, idempotency_key=key)

    async def get_invoice(self, invoice_id: str) -> Invoice:
        return await self._call(Invoice, "GET", f"/v1/invoices/{_segment(invoice_id)}")

    async def list_invoices(
        self,
        *,
        limit: int | None = None,
        starting_after: str | None = None,
        status: str | None = None,
        order_id: str | None = None,
        created_gte: datetime | str | None = None,
        created_lt: datetime | str | None = None,
    ) -> InvoiceList:
        """One page, newest first; pass the page's ``next_starting_after`` to get the next one."""
        query = _query(
            limit=limit,
            starting_after=starting_after,
            status=status,
            order_id=order_id,
            created_gte=created_gte,
            created_lt=created_lt,
        )
        return await self._call(InvoiceList, "GET", "/v1/invoices", params=query)

    async def iter_invoices(
        self,
        *,
        page_size: int = 100,
        status: str | None = None,
        order_id: str | None = None,
        created_gte: datetime | str | None = None,
        created_lt: datetime | str | None = None,
    ) -> AsyncIterator[Invoice]:
        """Every matching invoice, newest first, fetched page by page."""
        cursor: str | None = None
        while True:
            page = await self.list_invoices(
                limit=page_size,
                starting_after=cursor,
                status=status,
                order_id=order_id,
                created_gte=created_gte,
                created_lt=created_lt,
            )
            for invoice in page.data:
                yield invoice
            if not page.has_more or page.next_starting_after is None:
                return
            cursor = page.next_starting_after

    async def cancel_invoice(self, invoice_id: str) -> Invoice:
        """Cancel while nothing confirmed has paid it; :class:`Conflict` otherwise."""
        return await self._call(Invoice, "POST", f"/v1/invoices/{_segment(invoice_id)}/cancel")

    async def accept_late_payment(self, invoice_id: str) -> Invoice:
        """Settle an expired invoice whose late payment covers the price; :class:`Conflict` otherwise."""
        return await self._call(Invoice, "POST", f"/v1/invoices/{_segment(invoice_id)}/accept-late")

    async def list_payments(self, invoice_id: str) -> PaymentList:
        return await self._call(PaymentList, "GET", f"/v1/invoices/{_segment(invoice_id)}/payments")

    # --- rates, balance, ledger -----------------------------------------------------------------------

    async def get_rates(self) -> RatesView:
        return await self._call(RatesView, "GET", "/v1/rates")

    async def get_balance(self) -> Balance:
        return await self._call(Balance, "GET", "/v1/balance")

    async def list_ledger_entries(
        self, *, limit: int | None = None, starting_after: str | None = None
    ) -> LedgerPage:
        query = _query(limit=limit, starting_after=starting_after)
        return await self._call(LedgerPage, "GET", "/v1/ledger", params=query)

    async def iter_ledger_entries(self, *, page_size: int = 200) -> AsyncIterator[LedgerEntry]:
        """Every journal entry, newest first: what reconciliation walks."""
        cursor: str | None = None
        while True:
            page = await self.list_ledger_entries(limit=page_size, starting_after=cursor)
            for entry in page.data:
                yield entry
            if not page.has_more or page.next_starting_after is None:
                return
            cursor = page.next_starting_after

    # --- webhook endpoints ----------------------------------------------------------------------------

    async def create_webhook_endpoint(
        self,
        url: str,
        *,
        event_types: list[str] | None = None,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> WebhookEndpoint:
        """Register ``url`` for ``event_types`` (default ``["*"]``: all). Keep ``.secret``: shown once."""
        params = CreateWebhookEndpointParams(
            url=url, event_types=event_types or ["*"], description=description
        )
        key = idempotency_key or str(uuid.uuid4())
        return await self._call(
            WebhookEndpoint, "POST", "/v1/webhook-endpoints", body=params, idempotency_key=key
        )

    async def list_webhook_endpoints(self) -> WebhookEndpointList:
        return await self._call(WebhookEndpointList, "GET", "/v1/webhook-endpoints")

    async def get_webhook_endpoint(self, endpoint_id: str) -> WebhookEndpoint:
        return await self._call(WebhookEndpoint, "GET", f"/v1/webhook-endpoints/{_segment(endpoint_id)}")

    async def update_webhook_endpoint(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        event_types: list[str] | None = None,
        description: str | _Unset | None = UNSET,
        status: str | None = None,
    ) -> WebhookEndpoint:
        """``PATCH``: only what you pass changes; ``description=None`` clears it, leaving it out keeps it."""
        changes: dict[str, Any] = {
            name: value
            for name, value in (("url", url), ("event_types", event_types), ("status", status))
            if value is not None
        }
        if not isinstance(description, _Unset):
            changes["description"] = description
        params = UpdateWebhookEndpointParams.model_validate(changes)
        return await self._call(
            WebhookEndpoint,
            "PATCH",
            f"/v1/webhook-endpoints/{_segment(endpoint_id)}",
            body=params,
            omit="unset",
        )

    async def delete_webhook_endpoint(self, endpoint_id: str) -> None:
        await self._send("DELETE", f"/v1/webhook-endpoints/{_segment(endpoint_id)}")

    async def rotate_webhook_secret(
        self, endpoint_id: str, *, expire_previous_in_seconds: int = 86400
    ) -> WebhookEndpoint:
        """A new secret (in ``.secret``); the old one keeps verifying for the overlap you ask for.

        During the overlap deliveries carry two ``v1=`` signatures, so a receiver configured with either
        secret accepts them: deploy the new secret, then let the old one expire.
        """
        params = RotateSecretParams(expire_previous_in_seconds=expire_previous_in_seconds)
        return await self._call(
            WebhookEndpoint,
            "POST",
            f"/v1/webhook-endpoints/{_segment(endpoint_id)}/rotate-secret",
            body=params,
            omit="nothing",
        )

    # --- events and deliveries ------------------------------------------------------------------------

    async def list_events(
        self,
        *,
        type: str | None = None,
        invoice_id: str | None = None,
        limit: int | None = None,
        starting_after: str | None = None,
    ) -> EventList:
        query = _query(type=type, invoice_id=invoice_id, limit=limit, starting_after=starting_after)
        return await self._call(EventList, "GET", "/v1/events", params=query)

    async def iter_events(
        self, *, type: str | None = None, invoice_id: str | None = None, page_size: int = 100
    ) -> AsyncIterator[Event]:
        """Every matching event, page by page: how a receiver catches up on what it missed."""
        cursor: str | None = None
        while True:
            page = await self.list_events(
                type=type, invoice_id=invoice_id, limit=page_size, starting_after=cursor
            )
            for event in page.data:
                yield event
            if not page.has_more or page.next_starting_after is None:
                return
            cursor = page.next_starting_after

    async def get_event(self, event_id: str) -> Event:
        return await self._call(Event, "GET", f"/v1/events/{_segment(event_id)}")

    async def list_event_deliveries(self, event_id: str) -> WebhookDeliveryList:
        return await self._call(WebhookDeliveryList, "GET", f"/v1/events/{_segment(event_id)}/deliveries")

    async def redeliver_event(self, event_id: str, *, endpoint_id: str | None = None) -> WebhookDeliveryList:
        """Queue the event again (to one endpoint, or to every endpoint subscribed to it)."""
        return await self._call(
            WebhookDeliveryList,
            "POST",
            f"/v1/events/{_segment(event_id)}/redeliver",
            body=RedeliverParams(endpoint_id=endpoint_id),
            omit="nothing",  # the contract's body is {"endpoint_id": null} for "every endpoint"
        )


def _parse(model: type[M], answer: Answer) -> M:
    try:
        return model.model_validate(answer.json())
    except ValidationError as exc:
        raise InvalidResponse(
            f"the gateway's answer is not a valid {model.__name__}: {exc.errors()[0]['msg']}",
            status=answer.status,
            body=answer.body.decode("utf-8", "replace"),
        ) from None
