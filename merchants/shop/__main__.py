"""``python -m merchants.shop``: run the example shop on loopback.

The API key and webhook secret may also come from ``CRYPTOCITY_API_KEY`` and
``CRYPTOCITY_WEBHOOK_SECRET`` (comma-separated during a rotation), which keeps them out of ``ps``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from aiohttp import web

from merchants.shop.app import WEBHOOK_PATH, ShopConfig, create_shop_app


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m merchants.shop", description=__doc__)
    parser.add_argument("--gateway", required=True, help="the gateway's base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--api-key", default=os.environ.get("CRYPTOCITY_API_KEY"), help="merchant API key")
    parser.add_argument(
        "--webhook-secret",
        action="append",
        help="the webhook endpoint's secret (whsec_…); repeat it to accept an old and a new one",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--db", default="shop.sqlite3", help="SQLite file for orders and processed events")
    parser.add_argument("--public-url", help="how buyers reach the shop (default: the request's own URL)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    secrets = args.webhook_secret or [
        s for s in os.environ.get("CRYPTOCITY_WEBHOOK_SECRET", "").split(",") if s
    ]
    if not args.api_key or not secrets:
        print(
            "give --api-key and --webhook-secret (or CRYPTOCITY_API_KEY, CRYPTOCITY_WEBHOOK_SECRET)",
            file=sys.stderr,
        )
        return 2
    config = ShopConfig(
        gateway_url=args.gateway,
        api_key=args.api_key,
        webhook_secrets=tuple(secrets),
        db_path=args.db,
        public_url=args.public_url,
    )
    print(
        f"shop on http://{args.host}:{args.port}/ ; webhook URL: http://{args.host}:{args.port}{WEBHOOK_PATH}"
    )
    web.run_app(create_shop_app(config), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
