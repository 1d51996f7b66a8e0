"""The invoice service: the only code that changes invoices.

It turns API calls, chain facts and clock ticks into lifecycle events, and stores each resulting state with
its outbox events in one transaction. Everything slow or fallible that does not need the database (rates,
amount maths, validation, the invoice gate) happens before the transaction; the unit itself only reads and
writes rows, so the single writer stays fast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from gateway import jsonutil
from gateway.address_pool import AddressPool, IndexAllocator
from gateway.api.models import CreateInvoiceRequest
from gateway.clock import Clock, isoformat
from gateway.config import Config, confirmation_policy
from gateway.extensions import DetectedPayment, Extensions, InvoiceRequestContext, PolicyDecision
from gateway.ids import new_id
from gateway.invoices.lifecycle import (
    AcceptLate,
    AssetTerms,
    Cancel,
    DropReason,
    Event,
    Flag,
    IllegalTransition,
    InvoiceState,
    Outcome,
    PaymentConfirmations,
    PaymentDropped,
    PaymentSeen,
    PaymentStatus,
    RefundHold,
    ReleaseHold,
    Status,
    Tick,
    apply,
)
from gateway.invoices.records import (
    INVOICE_COLUMNS,
    InvoiceRecord,
    PaymentMethod,
    ResourceContext,
    invoice_resource,
    methods_to_json,
    payment_resource,
    record_from_row,
    state_to_json,
)
from gateway.money import (
    ASSETS,
    KZT_DECIMALS,
    Asset,
    Chain,
    crypto_due,
    parse_decimal_amount,
    round_half_even_tiyn,
)
from gateway.money import value_in_tiyn_exact as value_exact
from gateway.outbox import insert_event, prepare_event
from gateway.payment_uri import Bip21Request, Eip681Native, Eip681TokenTransfer, build_bip21, build_eip681
from gateway.rates import RateSource, apply_spread
from gateway.store import Row, Store, Tx

log = structlog.get_logger("gateway.invoices")


# -- errors the API maps onto problem+json -------------------------------------------------------------


class InvoiceError(Exception):
    """Base of the service's refusals."""


class InvalidInvoiceRequest(InvoiceError):
    def __init__(self, pointer: str, detail: str) -> None:
        super().__init__(f"{pointer}: {detail}")
        self.pointer = pointer
        self.detail = detail


class InvoiceNotFound(InvoiceError):
    pass


class IdempotencyConflict(InvoiceError):
    pass


class InvoiceRefused(InvoiceError):
    def __init__(self, status: int, title: str, detail: str, slug: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.slug = status, title, detail, slug


class TransitionRefused(InvoiceError):
    """The lifecycle does not allow this action now (e.g. cancelling a settled invoice)."""


class MerchantUnavailable(InvoiceError):
    pass


# -- values passed in and out ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateResult:
    status: int
    body: bytes
    invoice_id: str
    replayed: bool


TxHook = Callable[[Tx], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class MerchantTerms:
    """What invoice creation needs to know about a merchant (looked up before the transaction)."""

    id: str
    name: str
    active: bool
    accepted_assets: tuple[Asset, ...]
    btc_account_key: str | None
    eth_account_key: str | None
    default_expiry_seconds: int | None
    spread_bps: int = 0


@dataclass(frozen=True, slots=True)
class PaymentFact:
    """A watcher's observation of a payment output / transfer to an invoice address."""

    chain: Chain
    address: str
    payment_key: str
    asset: Asset
    amount_minor: int
    confirmations: int
    rbf_signalling: bool = False
    payer: str | None = None
    payer_scripts: tuple[str, ...] = ()
    block_hash: str | None = None
    block_height: int | None = None


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    """What makes two requests 'the same' for Idempotency-Key: method, path and the exact body."""
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()


class InvoiceService:
    def __init__(
        self,
        *,
        store: Store,
        clock: Clock,
        config: Config,
        rates: RateSource,
        addresses: AddressPool,
        indexes: IndexAllocator,
        extensions: Extensions,
        merchant_terms: Callable[[str], Any],
    ) -> None:
        self._store = store
        self._clock = clock
        self._config = config
        self._rates = rates
        self._addresses = addresses
        self._indexes = indexes
        self._min_tiyn = config.invoices.min_amount_tiyn
        self._max_tiyn = config.invoices.max_amount_tiyn
        self._confirmations = confirmation_policy(config.confirmations)
        self._ext = extensions
        self._merchant_terms = merchant_terms
        self.resource_context = ResourceContext(
            public_url=config.public_url,
            btc_network=config.bitcoin.network,
            eth_chain_id=config.ethereum.chain_id,
            token_address=config.ethereum.token_address,
            token_symbol=config.ethereum.token_symbol,
        )

    # -- creation ----------------------------------------------------------------------------------------

    async def create(
        self,
        merchant_id: str,
        request: CreateInvoiceRequest,
        *,
        idempotency_key: str | None,
        fingerprint: str,
    ) -> CreateResult:
        # The Idempotency-Key is checked inside the unit only: the writer serialises units, so that check is
        # authoritative, and a replay is rare enough not to deserve a read of its own on every create.
        merchant: MerchantTerms = await self._merchant_terms(merchant_id)
        if not merchant.active:
            raise MerchantUnavailable("this merchant account is disabled")
        cfg = self._config.invoices
        price_tiyn = parse_decimal_amount(request.amount, KZT_DECIMALS)
        if price_tiyn < self._min_tiyn:
            raise InvalidInvoiceRequest("/amount", f"must be at least {cfg.min_amount_kzt} KZT")
        if price_tiyn > self._max_tiyn:
            raise InvalidInvoiceRequest("/amount", f"must be at most {cfg.max_amount_kzt} KZT")
        if request.expires_in is not None:  # 0 is a value (and out of range), not "absent"
            expires_in = request.expires_in
        else:
            expires_in = merchant.default_expiry_seconds or cfg.default_expiry_seconds
        if not cfg.min_expiry_seconds <= expires_in <= cfg.max_expiry_seconds:
            raise InvalidInvoiceRequest(
                "/expires_in",
                f"must be between {cfg.min_expiry_seconds} and {cfg.max_expiry_seconds} seconds",
            )
        if request.description is not None and len(request.description) > cfg.description_max_length:
            raise InvalidInvoiceRequest(
                "/description", f"must be at most {cfg.description_max_length} characters"
            )
        metadata_json = None
        if request.metadata is not None:
            metadata_json = json.dumps(request.metadata, separators=(",", ":"), ensure_ascii=False)
            if len(metadata_json.encode()) > cfg.metadata_max_bytes:
                raise InvalidInvoiceRequest(
                    "/metadata", f"must be at most {cfg.metadata_max_bytes} bytes as JSON"
                )
        assets = self._choose_assets(merchant, request.assets)
        now = self._clock.now()
        refusal = await self._ext.invoice_gate.check(
            InvoiceRequestContext(merchant.id, price_tiyn, assets, now)
        )
        if refusal is not None:
            raise InvoiceRefused(refusal.status, refusal.title, refusal.detail, refusal.type_suffix)

        expires_at = now + timedelta(seconds=expires_in)
        terms: dict[Asset, AssetTerms] = {}
        dues: dict[Asset, int] = {}
        rates_doc: dict[str, Any] = {}
        for asset in assets:
            rate = self._rates.current(asset, now)  # RatesUnavailable propagates: 503 with Retry-After
            # The merchant's spread lowers the rate the amount due is computed with; the quote shows both.
            locked_rate = apply_spread(rate.kzt_per_unit, merchant.spread_bps)
            decimals = self._decimals(asset)
            due = crypto_due(price_tiyn, locked_rate, decimals)
            if asset is Asset.BTC and due < self._config.bitcoin.dust_limit_sat:
                continue  # below dust the payment could not even be relayed
            dues[asset] = due
            terms[asset] = AssetTerms(asset, locked_rate, decimals, self._confirmations(asset, price_tiyn))
            rates_doc[asset.value] = {
                "kzt_per_unit": str(locked_rate),
                "mid_kzt_per_unit": str(rate.kzt_per_unit),
                "sources": list(rate.sources),
                "observed_at": isoformat(rate.observed_at),
            }
        if not dues:
            raise InvalidInvoiceRequest(
                "/amount", "too small to pay in any accepted asset (below the dust limit)"
            )
        quote = {
            "locked_at": isoformat(now),
            "locked_until": isoformat(expires_at),
            "spread_bps": merchant.spread_bps,
            "rates": rates_doc,
        }
        state = InvoiceState.new(
            price_tiyn=price_tiyn, tolerance=cfg.payment_tolerance, expires_at=expires_at, terms=terms
        )
        invoice_id = new_id("inv")
        label = merchant.name
        message = request.description or f"Invoice {invoice_id}"

        # Everything but the writes happens here, before the unit: index reservation (from a block already
        # committed), derivation (from the pool), URIs, the resource and its JSON. The unit then only
        # inserts rows, which keeps the single writer's time per invoice small.
        chain_address: dict[Chain, tuple[str, int, str]] = {}
        methods: list[PaymentMethod] = []
        for asset, due in dues.items():
            chain = ASSETS[asset].chain
            if chain not in chain_address:
                account_key = merchant.btc_account_key if chain is Chain.BITCOIN else merchant.eth_account_key
                if account_key is None:
                    raise MerchantUnavailable(f"no {chain.value} account key for this merchant")
                index = await self._indexes.take(chain, account_key)
                chain_address[chain] = (
                    self._addresses.address(chain, account_key, index),
                    index,
                    account_key,
                )
            address, index, _ = chain_address[chain]
            methods.append(
                PaymentMethod(
                    asset,
                    chain.value,
                    address,
                    index,
                    due,
                    terms[asset].rate_kzt,
                    terms[asset].confirmations_required,
                    self._payment_uri(asset, address, due, label, message),
                )
            )
        stamp = isoformat(now)
        record = InvoiceRecord(
            id=invoice_id,
            merchant_id=merchant.id,
            order_id=request.order_id,
            description=request.description,
            metadata=request.metadata,
            redirect_url=request.redirect_url,
            quote=quote,
            state=state,
            methods=tuple(methods),
            created_at=stamp,
            updated_at=stamp,
        )
        resource = invoice_resource(record, self.resource_context)
        event = prepare_event(
            event_type="invoice.created",
            now=now,
            merchant_id=merchant.id,
            invoice_id=invoice_id,
            invoice_version=state.version,
            data={"invoice": resource},
        )
        invoice_row = (
            invoice_id,
            merchant.id,
            state.status.value,
            price_tiyn,
            str(cfg.payment_tolerance),
            request.order_id,
            request.description,
            metadata_json,
            request.redirect_url,
            jsonutil.dumps(quote),
            methods_to_json(record.methods),
            state_to_json(state),
            state.version,
            stamp,
            stamp,
            isoformat(expires_at),
        )
        address_rows = [
            (chain.value, address, invoice_id, account_key, index)
            for chain, (address, index, account_key) in chain_address.items()
        ]

        async def unit(tx: Tx) -> CreateResult | None:
            if idempotency_key is not None:
                claimed = await tx.execute(
                    "INSERT INTO idempotency_keys (merchant_id, key, request_hash, status_code, response_event,"
                    " created_at) VALUES (?, ?, ?, 201, ?, ?) ON CONFLICT (merchant_id, key) DO NOTHING",
                    (merchant_id, idempotency_key, fingerprint, event.id, stamp),
                )
                if not claimed:  # the key was used before: answer what it answered then, write nothing
                    return await self._idempotent_replay(tx, merchant_id, idempotency_key, fingerprint)
            await tx.execute(
                "INSERT INTO invoices (id, merchant_id, status, flags, price_tiyn, currency, tolerance, order_id,"
                " description, metadata, redirect_url, quote, payment_methods, state, version, created_at,"
                " updated_at, expires_at) VALUES (?, ?, ?, '[]', ?, 'KZT', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                invoice_row,
            )
            await tx.executemany(
                "INSERT INTO invoice_addresses (chain, address, invoice_id, account_key, derivation_index)"
                " VALUES (?, ?, ?, ?, ?)",
                address_rows,
            )
            await insert_event(tx, event)
            return None

        replay = await self._store.transaction(unit)
        if replay is not None:
            return replay
        log.info("invoice.created", invoice_id=invoice_id, merchant_id=merchant_id, price_tiyn=price_tiyn)
        return CreateResult(201, jsonutil.dumps_bytes(resource), invoice_id, replayed=False)

    async def _idempotent_replay(self, tx: Tx, merchant_id: str, key: str, fingerprint: str) -> CreateResult:
        row = await tx.fetchone(
            "SELECT k.request_hash, k.status_code, o.payload FROM idempotency_keys k"
            " JOIN outbox o ON o.id = k.response_event WHERE k.merchant_id = ? AND k.key = ?",
            (merchant_id, key),
        )
        if row is None:
            raise IdempotencyConflict("this Idempotency-Key is being used by a request that did not finish")
        if row["request_hash"] != fingerprint:
            raise IdempotencyConflict(
                "this Idempotency-Key was already used with a different request; use a new key for a new request"
            )
        invoice = jsonutil.loads(row["payload"])["data"]["invoice"]
        return CreateResult(
            int(row["status_code"]), jsonutil.dumps_bytes(invoice), invoice["id"], replayed=True
        )

    def _choose_assets(self, merchant: MerchantTerms, requested: list[Asset] | None) -> tuple[Asset, ...]:
        enabled = set(self._config.assets.enabled)
        usable = [a for a in merchant.accepted_assets if a in enabled]
        if requested is None:
            if not usable:
                raise InvalidInvoiceRequest(
                    "/assets", "the merchant accepts no asset that is enabled on this gateway"
                )
            return tuple(usable)
        for position, asset in enumerate(requested):
            if asset not in usable:
                raise InvalidInvoiceRequest(
                    f"/assets/{position}",
                    f"{asset.value} is not accepted by this merchant (accepted: {', '.join(a.value for a in usable)})",
                )
        return tuple(requested)

    def _decimals(self, asset: Asset) -> int:
        return self._config.ethereum.token_decimals if asset is Asset.USDT else ASSETS[asset].decimals

    def _payment_uri(self, asset: Asset, address: str, due: int, label: str, message: str) -> str:
        chain_id = self._config.ethereum.chain_id
        if asset is Asset.BTC:
            return build_bip21(Bip21Request(address=address, amount_sat=due, label=label, message=message))
        if asset is Asset.ETH:
            return build_eip681(Eip681Native(address=address, chain_id=chain_id, value_wei=due))
        return build_eip681(
            Eip681TokenTransfer(
                token=self._config.ethereum.token_address, chain_id=chain_id, to=address, amount_units=due
            )
        )

    # -- reads -------------------------------------------------------------------------------------------

    async def get(self, merchant_id: str | None, invoice_id: str) -> InvoiceRecord:
        record = await self._store.read(lambda tx: load_invoice(tx, invoice_id))
        if record is None or (merchant_id is not None and record.merchant_id != merchant_id):
            raise InvoiceNotFound(invoice_id)
        return record

    def resource(self, record: InvoiceRecord) -> dict[str, Any]:
        return invoice_resource(record, self.resource_context)

    async def list_invoices(
        self,
        merchant_id: str,
        *,
        limit: int,
        starting_after: str | None = None,
        status: str | None = None,
        order_id: str | None = None,
        created_gte: str | None = None,
        created_lt: str | None = None,
    ) -> tuple[list[InvoiceRecord], bool]:
        async def query(tx: Tx) -> tuple[list[InvoiceRecord], bool]:
            where = ["merchant_id = ?"]
            params: list[Any] = [merchant_id]
            if starting_after is not None:
                anchor = await tx.fetchone(
                    "SELECT created_at, id FROM invoices WHERE id = ? AND merchant_id = ?",
                    (starting_after, merchant_id),
                )
                if anchor is None:
                    raise InvoiceNotFound(starting_after)
                where.append("(created_at < ? OR (created_at = ? AND id < ?))")
                params += [anchor["created_at"], anchor["created_at"], anchor["id"]]
            filters = (
                ("status = ?", status),
                ("order_id = ?", order_id),
                ("created_at >= ?", created_gte),
                ("created_at < ?", created_lt),
            )
            for condition, value in filters:
                if value is not None:
                    where.append(condition)
                    params.append(value)
            rows = await tx.fetchall(
                f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE {' AND '.join(where)}"  # noqa: S608 - fixed fragments
                " ORDER BY created_at DESC, id DESC LIMIT ?",
                (*params, limit + 1),
            )
            has_more = len(rows) > limit
            rows = rows[:limit]
            return [record_from_row(r) for r in rows], has_more

        return await self._store.read(query)

    async def payments(self, merchant_id: str, invoice_id: str) -> list[dict[str, Any]]:
        record = await self.get(merchant_id, invoice_id)
        rows = await self._store.read(
            lambda tx: tx.fetchall(
                "SELECT * FROM payments WHERE invoice_id = ? ORDER BY detected_at, id", (invoice_id,)
            )
        )
        return [payment_resource(row, record.state) for row in rows]

    # -- state changes -----------------------------------------------------------------------------------

    async def cancel(self, merchant_id: str, invoice_id: str) -> InvoiceRecord:
        return await self._change(invoice_id, merchant_id, lambda record: Cancel())

    async def accept_late(self, merchant_id: str, invoice_id: str) -> InvoiceRecord:
        return await self._change(invoice_id, merchant_id, lambda record: AcceptLate())

    async def release_hold(
        self, invoice_id: str, payment_key: str, *, also: TxHook | None = None
    ) -> InvoiceRecord:
        """Release a held payment; ``also`` runs in the same transaction (the regulator's record of it)."""
        return await self._change(
            invoice_id, None, lambda record: ReleaseHold(payment_key), payment_key=payment_key, also=also
        )

    async def refund_hold(
        self, invoice_id: str, payment_key: str, *, also: TxHook | None = None
    ) -> InvoiceRecord:
        """Order a held payment refunded; ``also`` runs in the same transaction."""
        return await self._change(
            invoice_id, None, lambda record: RefundHold(payment_key), payment_key=payment_key, also=also
        )

    async def forget_idempotency_keys(self) -> int:
        """Drop Idempotency-Keys older than the retention (by the domain clock); returns how many."""
        hours = self._config.invoices.idempotency_retention_hours
        cutoff = isoformat(self._clock.now() - timedelta(hours=hours))
        return await self._store.transaction(
            lambda tx: tx.execute("DELETE FROM idempotency_keys WHERE created_at < ?", (cutoff,))
        )

    async def expire_due(self, page: int = 500) -> int:
        """Apply the clock to open invoices whose time is up; returns how many changed.

        A held invoice stays open past its expiry until the regulator releases or refunds its payment, so
        it is left out of the query: otherwise every sweep would open a write unit for each of them, and
        once ``page`` held invoices were due, the oldest page would be all held and newer invoices would
        never expire (seen in the full-city simulation, with about 600 holds in a day). Due invoices are
        read a page at a time, in (expires_at, id) order, until none is left.
        """
        now = isoformat(self._clock.now())
        held = f'%"{Flag.ON_HOLD.value}"%'
        after = ("", "")
        changed = 0
        while True:
            query = (now, held, after[0], after[0], after[1], page)

            async def due(tx: Tx, query: tuple[Any, ...] = query) -> list[Row]:
                return await tx.fetchall(
                    "SELECT id, expires_at FROM invoices WHERE status = 'new' AND expires_at <= ?"
                    " AND flags NOT LIKE ? AND (expires_at > ? OR (expires_at = ? AND id > ?))"
                    " ORDER BY expires_at, id LIMIT ?",
                    query,
                )

            rows = await self._store.read(due)
            for row in rows:
                try:
                    record = await self._change(row["id"], None, lambda record: Tick())
                except (IllegalTransition, TransitionRefused):
                    continue
                changed += record.state.status is not Status.NEW
            if len(rows) < page:
                return changed
            after = (rows[-1]["expires_at"], rows[-1]["id"])

    async def record_payment(self, fact: PaymentFact) -> InvoiceRecord | None:
        """A payment to a watched address was seen (or seen again); None if the address is not an invoice's."""
        if fact.amount_minor <= 0:
            raise ValueError("a payment amount must be positive")
        now = self._clock.now()

        async def unit(tx: Tx) -> InvoiceRecord | None:
            existing = await tx.fetchone(
                "SELECT invoice_id FROM payments WHERE chain = ? AND payment_key = ?",
                (fact.chain.value, fact.payment_key),
            )
            if existing is not None:
                event: Event = PaymentConfirmations(fact.payment_key, fact.confirmations)
                record = await load_invoice(tx, existing["invoice_id"])
                assert record is not None
                known = _payment_of(record.state, fact.payment_key)
                if known is not None and known.status is PaymentStatus.DROPPED:
                    event = _seen(fact)  # back after a drop (reorg, rebroadcast): the lifecycle decides
                return await self._apply(tx, record, event, now, fact=fact)
            owner = await tx.fetchone(
                "SELECT invoice_id FROM invoice_addresses WHERE chain = ? AND address = ?",
                (fact.chain.value, fact.address),
            )
            if owner is None:
                return None
            record = await load_invoice(tx, owner["invoice_id"])
            assert record is not None
            terms = record.state.terms.get(fact.asset)
            if terms is None:  # e.g. ETH sent to an invoice that offered only USDT: kept aside, never counted
                await _insert_unaccounted(tx, record.id, fact, None, "asset_not_accepted", now)
                return record
            value = round_half_even_tiyn(value_exact(fact.amount_minor, terms.rate_kzt, terms.decimals))
            decision = await self._decide(
                tx,
                DetectedPayment(
                    invoice_id=record.id,
                    merchant_id=record.merchant_id,
                    chain=fact.chain.value,
                    payment_key=fact.payment_key,
                    asset=fact.asset,
                    amount_minor=fact.amount_minor,
                    value_tiyn=value,
                    payer=fact.payer,
                    detected_at=now,
                    payer_scripts=fact.payer_scripts,
                ),
            )
            return await self._apply(tx, record, _seen(fact, decision), now, fact=fact)

        return await self._store.transaction(unit)

    async def record_unaccounted(self, fact: PaymentFact, contract: str) -> bool:
        """Money to an invoice address in a token the gateway does not accept; True if it was an invoice's.

        It is stored (idempotently, by payment key) for support and refunds and never moves the invoice.
        """
        now = self._clock.now()

        async def unit(tx: Tx) -> bool:
            owner = await tx.fetchone(
                "SELECT invoice_id FROM invoice_addresses WHERE chain = ? AND address = ?",
                (fact.chain.value, fact.address),
            )
            if owner is None:
                return False
            await _insert_unaccounted(tx, owner["invoice_id"], fact, contract, "unknown_token", now)
            return True

        recorded = await self._store.transaction(unit)
        if recorded:
            log.warning(
                "payment.unaccounted", payment_key=fact.payment_key, contract=contract, reason="unknown_token"
            )
        return recorded

    async def unaccounted_payments(self, invoice_id: str) -> list[dict[str, Any]]:
        rows = await self._store.read(
            lambda tx: tx.fetchall(
                "SELECT * FROM unaccounted_payments WHERE invoice_id = ? ORDER BY detected_at, payment_key",
                (invoice_id,),
            )
        )
        return [dict(r) for r in rows]

    async def payment_dropped(
        self, chain: Chain, payment_key: str, reason: DropReason
    ) -> InvoiceRecord | None:
        now = self._clock.now()

        async def unit(tx: Tx) -> InvoiceRecord | None:
            row = await tx.fetchone(
                "SELECT invoice_id FROM payments WHERE chain = ? AND payment_key = ?",
                (chain.value, payment_key),
            )
            if row is None:
                return None
            record = await load_invoice(tx, row["invoice_id"])
            assert record is not None
            return await self._apply(tx, record, PaymentDropped(payment_key, reason), now)

        return await self._store.transaction(unit)

    async def _decide(self, tx: Tx, payment: DetectedPayment) -> PolicyDecision:
        try:
            return await self._ext.payment_policy.decide(tx, payment)
        except Exception:  # fail closed: a broken policy holds money, it never waves it through
            log.exception("policy.failed", invoice_id=payment.invoice_id, payment_key=payment.payment_key)
            return PolicyDecision.hold("policy_error")

    async def _change(
        self,
        invoice_id: str,
        merchant_id: str | None,
        make_event: Callable[[InvoiceRecord], Event],
        payment_key: str | None = None,
        also: TxHook | None = None,
    ) -> InvoiceRecord:
        now = self._clock.now()

        async def unit(tx: Tx) -> InvoiceRecord:
            record = await load_invoice(tx, invoice_id)
            if record is None or (merchant_id is not None and record.merchant_id != merchant_id):
                raise InvoiceNotFound(invoice_id)
            updated = await self._apply(tx, record, make_event(record), now)
            assert updated is not None
            if also is not None:
                await also(tx)
            return updated

        try:
            return await self._store.transaction(unit)
        except IllegalTransition as exc:
            raise TransitionRefused(str(exc)) from None

    async def _apply(
        self, tx: Tx, record: InvoiceRecord, event: Event, now: datetime, *, fact: PaymentFact | None = None
    ) -> InvoiceRecord:
        outcome: Outcome = apply(record.state, event, now)
        if fact is not None:
            await _upsert_payment(tx, record, outcome.state, fact, now)
        elif isinstance(event, PaymentDropped | ReleaseHold | RefundHold):
            await _sync_payment(tx, record.id, outcome.state, event.payment_id, now)
        if not outcome.changed:
            return record
        stamp = isoformat(now)
        new_record = _with_state(record, outcome.state, stamp)
        state = outcome.state
        await tx.execute(
            "UPDATE invoices SET status = ?, flags = ?, state = ?, version = ?, updated_at = ? WHERE id = ?",
            (
                state.status.value,
                jsonutil.dumps(sorted(f.value for f in state.flags)),
                state_to_json(state),
                state.version,
                stamp,
                record.id,
            ),
        )
        resource = invoice_resource(new_record, self.resource_context)
        payment_id = getattr(event, "payment_id", None)
        for kind in outcome.notifications:
            data: dict[str, Any] = {"invoice": resource}
            if payment_id is not None and kind.startswith("payment."):
                data["payment_key"] = payment_id
            if kind == "payment.dropped" and isinstance(event, PaymentDropped):
                data["reason"] = event.reason.value  # replaced, evicted, reorged_out or double_spent
            await insert_event(
                tx,
                prepare_event(
                    event_type=kind,
                    now=now,
                    merchant_id=record.merchant_id,
                    invoice_id=record.id,
                    invoice_version=state.version,
                    data=data,
                ),
            )
        for before, after in outcome.transitions:
            log.info(
                "invoice.transition",
                invoice_id=record.id,
                merchant_id=record.merchant_id,
                from_status=before.value,
                to_status=after.value,
                trigger=type(event).__name__,
            )
        return new_record


# -- helpers shared by the service's units -------------------------------------------------------------


def _payment_of(state: InvoiceState, payment_id: str) -> Any:
    return dict(state.payments).get(payment_id)


def _seen(fact: PaymentFact, decision: PolicyDecision | None = None) -> PaymentSeen:
    held = decision is not None and not decision.accept
    return PaymentSeen(
        fact.payment_key,
        fact.asset,
        fact.amount_minor,
        fact.confirmations,
        fact.rbf_signalling,
        held=held,
        hold_reason=decision.reason if held and decision is not None else None,
    )


def _with_state(record: InvoiceRecord, state: InvoiceState, stamp: str) -> InvoiceRecord:
    return dataclasses.replace(record, state=state, updated_at=stamp)


async def _upsert_payment(
    tx: Tx, record: InvoiceRecord, state: InvoiceState, fact: PaymentFact, now: datetime
) -> None:
    payment = _payment_of(state, fact.payment_key)
    if payment is None:
        return
    stamp = isoformat(now)
    await tx.execute(
        "INSERT INTO payments (id, invoice_id, chain, payment_key, asset, address, amount_minor, confirmations,"
        " status, rbf_signalling, late, hold_reason, payer, block_hash, block_height, detected_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (chain, payment_key) DO UPDATE SET confirmations = excluded.confirmations,"
        " status = excluded.status, late = excluded.late, hold_reason = excluded.hold_reason,"
        " block_hash = excluded.block_hash, block_height = excluded.block_height, updated_at = excluded.updated_at",
        (
            new_id("pay"),
            record.id,
            fact.chain.value,
            fact.payment_key,
            fact.asset.value,
            fact.address,
            str(fact.amount_minor),
            payment.confirmations,
            payment.status.value,
            int(fact.rbf_signalling),
            int(payment.late),
            payment.hold_reason,
            fact.payer,
            fact.block_hash,
            fact.block_height,
            stamp,
            stamp,
        ),
    )


async def _insert_unaccounted(
    tx: Tx, invoice_id: str, fact: PaymentFact, contract: str | None, reason: str, now: datetime
) -> None:
    await tx.execute(
        "INSERT INTO unaccounted_payments (chain, payment_key, invoice_id, address, contract, asset,"
        " amount_minor, reason, payer, block_hash, block_height, detected_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (chain, payment_key) DO NOTHING",
        (
            fact.chain.value,
            fact.payment_key,
            invoice_id,
            fact.address,
            contract,
            None if contract is not None else fact.asset.value,
            str(fact.amount_minor),
            reason,
            fact.payer,
            fact.block_hash,
            fact.block_height,
            isoformat(now),
        ),
    )


async def _sync_payment(tx: Tx, invoice_id: str, state: InvoiceState, payment_id: str, now: datetime) -> None:
    """Copy a payment's new status from the lifecycle state onto its row (drops, releases, refunds)."""
    payment = _payment_of(state, payment_id)
    if payment is None:
        return
    await tx.execute(
        "UPDATE payments SET status = ?, confirmations = ?, hold_reason = ?, updated_at = ?"
        " WHERE invoice_id = ? AND payment_key = ?",
        (
            payment.status.value,
            payment.confirmations,
            payment.hold_reason,
            isoformat(now),
            invoice_id,
            payment_id,
        ),
    )


async def load_invoice(tx: Tx, invoice_id: str) -> InvoiceRecord | None:
    row = await tx.fetchone(f"SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = ?", (invoice_id,))  # noqa: S608
    return None if row is None else record_from_row(row)


__all__ = [
    "CreateResult",
    "IdempotencyConflict",
    "InvalidInvoiceRequest",
    "InvoiceError",
    "InvoiceNotFound",
    "InvoiceRefused",
    "InvoiceService",
    "MerchantTerms",
    "MerchantUnavailable",
    "PaymentFact",
    "TransitionRefused",
    "request_fingerprint",
]
