"""The demo merchant: account keys derived from the well-known public test mnemonic.

Anyone can spend from this mnemonic, which is exactly right for a local demo and exactly wrong for anything
else; the gateway refuses mainnet unless configured, so these keys can only ever see test coins.
"""

from __future__ import annotations

from embit import bip32, bip39
from embit.networks import NETWORKS

DEMO_MERCHANT_NAME = "Alatau Demo Coffee"
DEMO_MNEMONIC = "test test test test test test test test test test test junk"


def demo_account_keys() -> tuple[str, str]:
    """(BIP84 testnet account key as vpub, BIP44 ETH account key as xpub) of the demo mnemonic."""
    root = bip32.HDKey.from_seed(bip39.mnemonic_to_seed(DEMO_MNEMONIC))
    btc = root.derive("m/84h/1h/0h").to_public()
    eth = root.derive("m/44h/60h/0h").to_public()
    return btc.to_base58(version=NETWORKS["test"]["zpub"]), eth.to_base58(version=NETWORKS["main"]["xpub"])
