"""The shop's few HTML pages: plain strings, every value escaped, no template engine to learn."""

from __future__ import annotations

from collections.abc import Iterable
from html import escape

from merchants.shop.catalog import Product
from merchants.shop.orders import Order

_STATUS_TEXT = {
    "pending": "Waiting for payment. This page refreshes by itself.",
    "paid": "Paid. Thank you! Your order is on its way.",
    "expired": "The invoice expired before it was paid. Please place a new order.",
    "cancelled": "The payment was cancelled.",
    "reversed": "The payment was reversed on the blockchain: the order is on hold and will not ship.",
}


def _page(title: str, body: str, *, refresh_seconds: int | None = None) -> str:
    refresh = f'<meta http-equiv="refresh" content="{refresh_seconds}">' if refresh_seconds else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title>{refresh}"
        "<style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}"
        "li{margin:.5rem 0}.status{font-size:1.3rem;font-weight:600}</style></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )


def catalog_page(products: Iterable[Product]) -> str:
    items = "".join(
        f"<li>{escape(p.name)}: <b>{escape(p.price_kzt)} ₸</b>"
        f'<form method="post" action="/orders" style="display:inline">'
        f'<input type="hidden" name="product" value="{escape(p.id)}"> <button>Pay with crypto</button>'
        "</form></li>"
        for p in products
    )
    return _page("Alatau example shop", f"<ul>{items}</ul>")


def order_page(order: Order, product: Product | None) -> str:
    name = product.name if product else order.product_id
    late = "paid_late" in order.invoice_flags
    lines = [
        f"<p>{escape(name)}: <b>{escape(order.amount_kzt)} ₸</b></p>",
        f'<p class="status">{escape(order.status)}</p>',
        f"<p>{escape(_STATUS_TEXT.get(order.status, ''))}</p>",
    ]
    if late:
        lines.append("<p>A payment arrived after the invoice expired; the shop will accept or refund it.</p>")
    if order.status == "pending":
        lines.append(
            f'<form method="post" action="/orders/{escape(order.id)}/pay"><button>Go to payment</button></form>'
        )
    if order.invoice_id:
        lines.append(
            f"<p><small>Invoice {escape(order.invoice_id)}: {escape(order.invoice_status or '')}"
            f" (version {order.invoice_version})</small></p>"
        )
    return _page(
        f"Order {order.id}", "".join(lines), refresh_seconds=5 if order.status == "pending" else None
    )


def error_page(message: str, retry_action: str | None = None) -> str:
    retry = (
        f'<form method="post" action="{escape(retry_action)}"><button>Try again</button></form>'
        if retry_action
        else ""
    )
    return _page("Payment is not available right now", f"<p>{escape(message)}</p>{retry}")
