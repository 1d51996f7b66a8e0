"""An example shop that takes CryptoCity payments: the template a merchant copies.

Run it next to a gateway::

    python -m merchants.shop --gateway http://127.0.0.1:8080 --api-key cc_test_… \
        --webhook-secret whsec_… --port 8090 --db shop.sqlite3

It uses only the SDK (``merchants.sdk``) and talks to the gateway over HTTP, like any merchant.
"""

from merchants.shop.app import ShopConfig, create_shop_app
from merchants.shop.orders import OrderStore, WebhookStats, order_status_for

__all__ = ["OrderStore", "ShopConfig", "WebhookStats", "create_shop_app", "order_status_for"]
