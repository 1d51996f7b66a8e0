"""The encrypted resident wallet on a real anvil node: ETH and USDT balances, paying EIP-681 requests (a URI
and a QR image, with tenge values from a real gateway's rates), a declined prompt, the history, and a
wallet for another chain id refused.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from eth_typing import HexStr

from gateway.payment_uri import Eip681Native, Eip681TokenTransfer, build_eip681
from gateway.qr import qr_png
from sandbox.devnets.ethereum import CHAIN_ID, TOKEN_ADDRESS, EthereumDevnet
from tests.integration.gateway_process import cli_env, create_merchant, start_gateway
from wallets.ethereum import token_transfer_logs

pytestmark = pytest.mark.integration

ETHER = 10**18
USDT = 10**6
INVOICE = "0x000000000000000000000000000000000000c0Fe"
TOKEN_INVOICE = "0x000000000000000000000000000000000000bEEF"


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


async def test_keystore_wallet_on_anvil(tmp_path: Path) -> None:
    gateway = await asyncio.to_thread(start_gateway, tmp_path)
    try:
        api_key = (await asyncio.to_thread(create_merchant, tmp_path))["api_key"]
        async with EthereumDevnet(log_path=tmp_path / "anvil.log") as devnet:
            await _flow(tmp_path, devnet, gateway.base_url, api_key)
    finally:
        assert await asyncio.to_thread(gateway.stop) == 0


async def _flow(tmp_path: Path, devnet: EthereumDevnet, gateway_url: str, api_key: str) -> None:
    env = cli_env(
        tmp_path,
        CRYPTOCITY_WALLET_PASSWORD="resident password 2",
        CRYPTOCITY_WALLET_SCRYPT_N="1024",
        CRYPTOCITY_GATEWAY_API_KEY=api_key,
    )

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return wallet_cli(tmp_path, env, *args, stdin=stdin)

    node = ["--eth-rpc", devnet.url]
    created = await asyncio.to_thread(run, "new", "--usdt-token", TOKEN_ADDRESS)
    assert created.returncode == 0, created.stderr
    address = (await asyncio.to_thread(run, "address", "--asset", "ETH")).stdout.strip()
    assert f"ETH {address}  chain id {CHAIN_ID}" in created.stdout

    # fund from the devnet with real transactions (so the history has them)
    funded = await devnet.fund_eth(address, 5 * ETHER, transfer=True)
    minted = await devnet.mint(address, 100 * USDT)

    balance = await asyncio.to_thread(run, "balance", *node, "--gateway", gateway_url)
    assert balance.returncode == 0, balance.stderr
    assert f"ETH  5 (≈ 8415000.00 KZT)  chain id {CHAIN_ID}, {address}" in balance.stdout
    assert f"USDT 100 (≈ 51000.00 KZT)  tUSDT {TOKEN_ADDRESS}" in balance.stdout
    exact = json.loads((await asyncio.to_thread(run, "balance", *node, "--json")).stdout)
    assert exact["ETH"] == {"wei": str(5 * ETHER), "chain_id": CHAIN_ID, "kzt": None}
    assert exact["USDT"] == {"units": str(100 * USDT), "decimals": 6, "token": TOKEN_ADDRESS, "kzt": None}

    # an ether request by URI, with --yes
    ether_uri = build_eip681(Eip681Native(INVOICE, CHAIN_ID, 25 * 10**15))
    paid = await asyncio.to_thread(run, "pay", ether_uri, *node, "--yes", "--gateway", gateway_url)
    assert paid.returncode == 0, paid.stderr
    assert f"pay 0.025 ETH (≈ 42075.00 KZT) to {INVOICE} on Ethereum chain id {CHAIN_ID}" in paid.stderr
    ether_tx = paid.stdout.strip()
    ether_receipt = await devnet.w3.eth.get_transaction_receipt(HexStr(ether_tx))
    assert ether_receipt["status"] == 1 and await devnet.eth_balance(INVOICE) == 25 * 10**15

    # a token request from a QR image
    png = tmp_path / "token-invoice.png"
    png.write_bytes(
        qr_png(build_eip681(Eip681TokenTransfer(TOKEN_ADDRESS, CHAIN_ID, TOKEN_INVOICE, 7_500_000)))
    )
    token_paid = await asyncio.to_thread(run, "pay", str(png), *node, "--yes", "--gateway", gateway_url)
    assert token_paid.returncode == 0, token_paid.stderr
    assert "pay 7.5 tUSDT" in token_paid.stderr and "(≈ 3825.00 KZT)" in token_paid.stderr
    token_tx = token_paid.stdout.strip()
    token_receipt = await devnet.w3.eth.get_transaction_receipt(HexStr(token_tx))
    [log] = token_transfer_logs(token_receipt, TOKEN_ADDRESS)
    assert (log.sender, log.recipient, log.amount_units) == (address, TOKEN_INVOICE, 7_500_000)

    # declined: nothing is sent, nothing mined
    height = await devnet.block_number()
    declined = await asyncio.to_thread(run, "pay", ether_uri, *node, stdin="no\n")
    assert declined.returncode == 1 and declined.stdout == "" and "declined" in declined.stderr
    assert f"You will pay 0.025 ETH to {INVOICE} on Ethereum chain id {CHAIN_ID}" in declined.stderr
    assert await devnet.block_number() == height and await devnet.eth_balance(INVOICE) == 25 * 10**15

    fees = sum(int(r["gasUsed"]) * int(r["effectiveGasPrice"]) for r in (ether_receipt, token_receipt))
    after = json.loads((await asyncio.to_thread(run, "balance", *node, "--json")).stdout)
    assert int(after["ETH"]["wei"]) == 5 * ETHER - 25 * 10**15 - fees
    assert after["USDT"]["units"] == str(100 * USDT - 7_500_000)

    history = json.loads((await asyncio.to_thread(run, "history", *node, "--json")).stdout)
    rows = {(row["asset"], row["txid"]): row for row in history}
    assert rows[("ETH", funded)]["direction"] == "in" and rows[("ETH", funded)]["amount"] == "+5"
    assert rows[("USDT", minted)]["amount"] == "+100"
    out = rows[("ETH", ether_tx)]
    assert (out["direction"], out["amount"], out["confirmations"]) == ("out", "-0.025", 2)
    assert rows[("USDT", token_tx)]["amount"] == "-7.5" and rows[("USDT", token_tx)]["fee"] is not None
    assert ("ETH", token_tx) not in rows  # the token transfer's zero-value call is listed once, as USDT
    assert [row["txid"] for row in history[:2]] == [token_tx, ether_tx]  # newest first

    # a wallet made for another chain refuses this node, before signing anything
    other = tmp_path / "other-chain.json"
    made = await asyncio.to_thread(run, "new", "--wallet", str(other), "--eth-chain-id", "11155111")
    assert made.returncode == 0, made.stderr
    refused = await asyncio.to_thread(run, "pay", ether_uri, *node, "--yes", "--wallet", str(other))
    assert refused.returncode == 2 and "wallet is for chain id 11155111" in refused.stderr
    assert await devnet.eth_balance(INVOICE) == 25 * 10**15
