"""``cryptocity wallet pay`` for a BIP21 request against a real bcoin regtest node.

The command restores the resident's wallet from the mnemonic, scans the chain (mined to segwit activation
to the resident's first address) and pays; the transaction must be in the node's mempool afterwards.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest

from gateway.chains.bitcoin_rpc import BitcoinRpc
from gateway.money import parse_decimal_amount
from gateway.payment_uri import Bip21Request, build_bip21
from gateway.qr import qr_png
from sandbox.devnets.bitcoin import REGTEST_HRP, SEGWIT_HEIGHT, BitcoinDevnet
from tests.integration.gateway_process import cli_env, create_merchant, run_cli, start_gateway
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


# -- the encrypted wallet file: new → address → funded → balance → pay (URI, QR, declined) → history ------


MERCHANT = "zoo " * 11 + "wrong"
BTC_RATE_KZT = Decimal("48450000.00")  # config.toml's fixed rate, which the test gateway serves


def wallet_cli(
    workdir: Path, env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sandbox.cli", "wallet", *args],
        env=env,
        cwd=workdir,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_keystore_wallet_receives_pays_and_lists_its_history(tmp_path: Path) -> None:
    gateway = await asyncio.to_thread(start_gateway, tmp_path)
    try:
        api_key = (await asyncio.to_thread(create_merchant, tmp_path))["api_key"]
        async with (
            BitcoinDevnet(log_path=tmp_path / "bcoin.log") as devnet,
            aiohttp.ClientSession() as session,
        ):
            # the devnet's own client does not retry, and bcoin closes connections idle for 5 s (as they
            # are while a command runs): a stale keep-alive connection must not fail the test
            rpc = BitcoinRpc(session, devnet.endpoint, retries=2, backoff_seconds=0.05)
            await _keystore_flow(tmp_path, devnet, rpc, gateway.base_url, api_key)
    finally:
        assert await asyncio.to_thread(gateway.stop) == 0


async def _keystore_flow(
    tmp_path: Path, devnet: BitcoinDevnet, rpc: BitcoinRpc, gateway_url: str, api_key: str
) -> None:
    env = cli_env(
        tmp_path,
        CRYPTOCITY_WALLET_PASSWORD="resident password 1",
        CRYPTOCITY_WALLET_SCRYPT_N="1024",
        CRYPTOCITY_WALLET_RPC_PASSWORD=devnet.api_key,
    )

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return wallet_cli(tmp_path, env, *args, stdin=stdin)

    node = ["--btc-rpc", devnet.url]
    created = await asyncio.to_thread(run, "new")
    assert created.returncode == 0, created.stderr
    words = next(line for line in created.stdout.splitlines() if line.startswith("recovery words: "))
    words = words.removeprefix("recovery words: ")
    first = (await asyncio.to_thread(run, "address", "--asset", "BTC")).stdout.strip()
    second = (await asyncio.to_thread(run, "address", "--new")).stdout.strip()
    mirror = BitcoinWallet.from_mnemonic(words, REGTEST_HRP)  # what the wallet derives, for checking
    assert (first, second) == (mirror.address(0), mirror.address(1))

    # fund from the devnet: a faucet mined to segwit activation pays the resident's two addresses
    faucet = BitcoinWallet.from_mnemonic(SHOP, REGTEST_HRP)
    await rpc.call("generatetoaddress", SEGWIT_HEIGHT, faucet.address(0))
    await faucet.scan(rpc)
    funding = [await faucet.pay(rpc, first, 100_000_000), await faucet.pay(rpc, second, 25_000_000)]
    [funded_block] = await rpc.call("generatetoaddress", 1, faucet.address(5))
    height = await rpc.block_count()

    balance = await asyncio.to_thread(
        run, "balance", *node, "--gateway", gateway_url, "--gateway-key", api_key
    )
    assert balance.returncode == 0, balance.stderr
    assert f"BTC  1.25 (≈ 60562500.00 KZT)  spendable, bitcoin regtest at height {height}" in balance.stdout
    as_json = json.loads((await asyncio.to_thread(run, "balance", *node, "--json")).stdout)
    assert as_json["BTC"] == {
        "spendable_sat": "125000000",
        "unconfirmed_sat": "0",
        "immature_sat": "0",
        "height": height,
        "kzt": None,  # no gateway named: crypto only, no invented rate
    }

    # pay a BIP21 URI with --yes: the summary shows crypto and tenge, and what it is for
    shop = BitcoinWallet.from_mnemonic(MERCHANT, REGTEST_HRP)
    uri = build_bip21(Bip21Request(shop.address(0), 150_000, label="Alatau Coffee", message="Invoice inv_1"))
    paid = await asyncio.to_thread(
        run, "pay", uri, *node, "--yes", "--gateway", gateway_url, "--gateway-key", api_key
    )
    assert paid.returncode == 0, paid.stderr
    tenge = f"{150_000 * BTC_RATE_KZT / 10**8:.2f}"
    assert (
        f'pay 0.0015 BTC (≈ {tenge} KZT) to {shop.address(0)} for "Invoice inv_1" (Alatau Coffee) '
        "on bitcoin regtest" in paid.stderr
    )
    first_txid = paid.stdout.strip()
    assert await rpc.mempool_entry(first_txid) is not None

    # a QR image of a second request, paid before any block: the restored wallet sees its own mempool
    # payment and does not spend the same coin twice
    png = tmp_path / "invoice.png"
    png.write_bytes(qr_png(build_bip21(Bip21Request(shop.address(1), 20_000))))
    scanned = await asyncio.to_thread(run, "pay", str(png), *node, "--yes")
    assert scanned.returncode == 0, scanned.stderr
    second_txid = scanned.stdout.strip()
    assert sorted(await rpc.mempool_txids()) == sorted([first_txid, second_txid])

    # declined at the prompt: nothing is sent
    third = build_bip21(Bip21Request(shop.address(2), 30_000))
    declined = await asyncio.to_thread(run, "pay", third, *node, stdin="n\n")
    assert declined.returncode == 1 and declined.stdout == ""
    assert f"You will pay 0.0003 BTC to {shop.address(2)}" in declined.stderr and "[y/N]" in declined.stderr
    assert sorted(await rpc.mempool_txids()) == sorted([first_txid, second_txid])

    # the history lists both payments (unconfirmed) and both receipts (one block deep)
    history = json.loads((await asyncio.to_thread(run, "history", *node, "--json")).stdout)
    by_txid = {row["txid"]: row for row in history}
    assert by_txid[first_txid]["direction"] == "out" and by_txid[first_txid]["amount"] == "-0.0015"
    assert by_txid[second_txid]["amount"] == "-0.0002" and by_txid[second_txid]["block"] is None
    for payment, amount in zip(funding, ("+1", "+0.25"), strict=True):
        row = by_txid[payment.txid]
        assert (row["direction"], row["amount"], row["block"], row["confirmations"]) == (
            "in",
            amount,
            height,
            1,
        )
    assert {row["txid"] for row in history[:2]} == {first_txid, second_txid}  # the mempool comes first
    fees = sum(parse_decimal_amount(by_txid[t]["fee"], 8) for t in (first_txid, second_txid))

    unconfirmed = json.loads((await asyncio.to_thread(run, "balance", *node, "--json")).stdout)["BTC"]
    assert int(unconfirmed["spendable_sat"]) + int(unconfirmed["unconfirmed_sat"]) == (
        125_000_000 - 150_000 - 20_000 - fees
    )

    # once mined, the payment shows its block and the shop has its coins
    [block] = await rpc.call("generatetoaddress", 1, faucet.address(6))
    text = await asyncio.to_thread(run, "history", *node)
    assert text.returncode == 0, text.stderr
    line = next(line for line in text.stdout.splitlines() if first_txid in line)
    assert "out" in line and "-0.0015" in line and f"block {height + 1} (1 conf.)" in line
    await shop.scan(rpc)
    assert sorted(c.amount_sat for c in shop.utxos()) == [20_000, 150_000]
    assert block != funded_block
    assert words not in created.stderr + balance.stdout + paid.stdout + paid.stderr + text.stdout
