"""``cryptocity wallet pay`` for a BIP21 request against a real bcoin regtest node.

The command restores the resident's wallet from the mnemonic, scans the chain (mined to segwit activation
to the resident's first address) and pays; the transaction must be in the node's mempool afterwards.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.payment_uri import Bip21Request, build_bip21
from gateway.qr import qr_png
from sandbox.devnets.bitcoin import REGTEST_HRP, BitcoinDevnet
from tests.integration.gateway_process import cli_env, run_cli
from wallets.bitcoin import BitcoinWallet

pytestmark = pytest.mark.integration

RESIDENT = "abandon " * 11 + "about"
SHOP = "legal winner thank year wave sausage worth useful legal winner thank yellow"


async def test_cli_pays_a_bip21_request_and_its_qr_code(tmp_path: Path) -> None:
    async with BitcoinDevnet(log_path=tmp_path / "bcoin.log") as devnet:
        assert devnet.rpc is not None
        await devnet.fund(BitcoinWallet.from_mnemonic(RESIDENT, REGTEST_HRP))
        shop = BitcoinWallet.from_mnemonic(SHOP, REGTEST_HRP)
        env = cli_env(
            tmp_path,
            CRYPTOCITY_WALLET_MNEMONIC=RESIDENT,
            CRYPTOCITY_WALLET_RPC_PASSWORD=devnet.api_key,
        )
        uri = build_bip21(Bip21Request(shop.address(0), 150_000, label="Alatau Coffee"))
        png = tmp_path / "invoice.png"
        png.write_bytes(qr_png(build_bip21(Bip21Request(shop.address(1), 20_000))))

        paid = await asyncio.to_thread(
            run_cli, tmp_path, "wallet", "pay", uri, "--rpc", devnet.url, "-y", env=env
        )
        assert paid.returncode == 0, paid.stderr
        assert "0.0015 BTC" in paid.stderr and "abandon" not in paid.stdout + paid.stderr
        txid = paid.stdout.strip()
        assert await devnet.rpc.mempool_entry(txid) is not None

        # a second run restores the wallet from scratch and sees the first payment only once it is mined
        await devnet.mine(1, shop.address(19))
        scanned = await asyncio.to_thread(
            run_cli,
            tmp_path,
            "wallet",
            "pay",
            str(png),
            "--rpc",
            devnet.url,
            "--yes",
            "--from-height",
            "1",
            env=env,
        )
        assert scanned.returncode == 0, scanned.stderr
        assert await devnet.rpc.mempool_txids() == [scanned.stdout.strip()]

        wrong_network = await asyncio.to_thread(
            run_cli, tmp_path, "wallet", "pay", uri, "--rpc", devnet.url, "--hrp", "tb", "--yes", env=env
        )
        assert wrong_network.returncode == 2 and "network tb" in wrong_network.stderr

        bad_key = dict(env, CRYPTOCITY_WALLET_RPC_PASSWORD="wrong")
        refused = await asyncio.to_thread(
            run_cli, tmp_path, "wallet", "pay", uri, "--rpc", devnet.url, "--yes", env=bad_key
        )
        assert refused.returncode == 1 and "credentials" in refused.stderr
