"""The resident's Ethereum wallet against a real anvil node (sandbox.devnets.ethereum.EthereumDevnet).

Each test starts its own node (~0.2 s) with TestUSDT deployed, funds a resident who is not one of anvil's
development accounts (ether by ``anvil_setBalance``, tokens minted by the owner) and pays EIP-681 requests
built by the gateway's own builder, in process and through the ``cryptocity wallet pay`` command.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_typing import HexStr
from hexbytes import HexBytes

from gateway.payment_uri import Eip681Native, Eip681TokenTransfer, build_eip681
from gateway.qr import qr_png
from sandbox.devnets.ethereum import CHAIN_ID, TOKEN_ADDRESS, TOKEN_DECIMALS, EthereumDevnet
from tests.integration.gateway_process import cli_env, run_cli
from wallets.ethereum import (
    EthereumWallet,
    InsufficientFunds,
    WrongChain,
    token_transfer_logs,
)

pytestmark = pytest.mark.integration

RESIDENT_MNEMONIC = "abandon " * 11 + "about"
INVOICE = "0x000000000000000000000000000000000000c0Fe"  # a fresh invoice address of the shop
OTHER_INVOICE = "0x000000000000000000000000000000000000bEEF"
ETHER = 10**18
USDT = 10**TOKEN_DECIMALS


@dataclass
class Net:
    devnet: EthereumDevnet
    resident: EthereumWallet


@pytest.fixture
async def net(tmp_path: Path) -> AsyncIterator[Net]:
    async with EthereumDevnet(log_path=tmp_path / "anvil.log") as devnet:
        resident = EthereumWallet.from_mnemonic(RESIDENT_MNEMONIC)
        await devnet.fund_eth(resident.address, 100 * ETHER)
        await devnet.mint(resident.address, 10_000 * USDT)
        yield Net(devnet, resident)


def ether_uri(to: str, value_wei: int, chain_id: int = CHAIN_ID) -> str:
    return build_eip681(Eip681Native(to, chain_id, value_wei))


def token_uri(to: str, amount_units: int) -> str:
    return build_eip681(Eip681TokenTransfer(TOKEN_ADDRESS, CHAIN_ID, to, amount_units))


async def test_ether_payment_by_uri(net: Net) -> None:
    w3, resident = net.devnet.w3, net.resident
    value = 1_234_567_890_123_456_789
    before = await resident.balance(w3)

    payment = await resident.pay_uri(w3, ether_uri(INVOICE, value))

    receipt = payment.receipt
    assert receipt is not None and receipt["status"] == 1
    assert await net.devnet.eth_balance(INVOICE) == value
    assert await resident.balance(w3) == before - value - receipt["gasUsed"] * receipt["effectiveGasPrice"]
    sent = await w3.eth.get_transaction(payment.tx_hash)
    assert sent["type"] == 2 and sent["maxPriorityFeePerGas"] == 10**9  # anvil's eth_maxPriorityFeePerGas
    assert sent["gas"] == 21_000


async def test_token_payment_by_transfer_uri_logs_the_exact_units(net: Net) -> None:
    w3, resident = net.devnet.w3, net.resident
    amount = 12_345_678  # 12.345678 tUSDT

    payment = await resident.pay_uri(w3, token_uri(INVOICE, amount))

    assert payment.receipt is not None
    [log] = token_transfer_logs(payment.receipt, TOKEN_ADDRESS)
    assert (log.sender, log.recipient, log.amount_units) == (resident.address, INVOICE, amount)
    assert await net.devnet.token_balance(INVOICE) == amount
    assert await net.devnet.token_balance(resident.address) == 10_000 * USDT - amount
    assert await resident.token_balance(w3, TOKEN_ADDRESS) == 10_000 * USDT - amount


async def test_fifty_concurrent_payments_get_consecutive_nonces_and_are_all_mined(net: Net) -> None:
    w3, resident, devnet = net.devnet.w3, net.resident, net.devnet
    first = await resident.next_nonce(w3)
    uris = [
        ether_uri(INVOICE, 10**15 + i) if i % 2 == 0 else token_uri(OTHER_INVOICE, USDT + i)
        for i in range(50)
    ]

    payments = await asyncio.gather(*(resident.pay_uri(w3, uri, wait=False) for uri in uris))
    await devnet.mine_until_pool_empty()  # a burst can outgrow a block even under automine
    receipts = await asyncio.gather(*(resident.wait(w3, p.tx_hash, timeout=30) for p in payments))

    assert sorted(p.tx.nonce for p in payments) == list(range(first, first + 50))
    assert all(r["status"] == 1 for r in receipts)
    assert await w3.eth.get_transaction_count(resident.address, "latest") == first + 50
    assert await devnet.eth_balance(INVOICE) == sum(10**15 + i for i in range(0, 50, 2))
    assert await devnet.token_balance(OTHER_INVOICE) == sum(USDT + i for i in range(1, 50, 2))
    for payment in payments:
        mined = await w3.eth.get_transaction(payment.tx_hash)
        assert mined["nonce"] == payment.tx.nonce and mined["blockNumber"] is not None


async def test_concurrent_payments_wait_while_blocks_are_mined_on_demand(net: Net) -> None:
    w3, resident, devnet = net.devnet.w3, net.resident, net.devnet
    await devnet.set_automine(False)
    first = await resident.next_nonce(w3)
    burst = asyncio.gather(*(resident.send_eth(w3, INVOICE, 1_000 + i, timeout=30) for i in range(20)))
    while not burst.done():  # the pool holds all 20 transactions of one sender until a block is mined
        await asyncio.sleep(0.05)
        await devnet.mine()
    payments = await burst
    assert sorted(p.tx.nonce for p in payments) == list(range(first, first + 20))
    assert all(p.receipt is not None and p.receipt["status"] == 1 for p in payments)


async def test_a_token_transfer_beyond_the_balance_is_refused_before_sending(net: Net) -> None:
    w3, resident, devnet = net.devnet.w3, net.resident, net.devnet
    height = await devnet.block_number()
    nonce = await w3.eth.get_transaction_count(resident.address, "pending")
    with pytest.raises(InsufficientFunds, match=f"holds {10_000 * USDT} base units"):
        await resident.pay_uri(w3, token_uri(INVOICE, 10_000 * USDT + 1))
    with pytest.raises(InsufficientFunds):
        await resident.transfer_token(w3, TOKEN_ADDRESS, INVOICE, 10**30)
    assert await devnet.block_number() == height
    assert await w3.eth.get_transaction_count(resident.address, "pending") == nonce
    assert await devnet.token_balance(INVOICE) == 0


async def test_a_request_for_another_chain_is_refused(net: Net) -> None:
    w3, resident = net.devnet.w3, net.resident
    with pytest.raises(WrongChain, match="node is on chain id 31337"):
        await resident.pay_uri(w3, ether_uri(INVOICE, 10**15, chain_id=1))
    assert await net.devnet.eth_balance(INVOICE) == 0


async def test_a_same_nonce_replacement_wins_over_the_pending_original(net: Net) -> None:
    w3, resident, devnet = net.devnet.w3, net.resident, net.devnet
    await devnet.set_automine(False)
    original = await resident.pay_uri(w3, token_uri(INVOICE, 5 * USDT), wait=False)
    # the replacement pays another address that holds no tUSDT yet: a first balance costs more gas
    replacement = resident.build_replacement(original.tx, to=OTHER_INVOICE, gas=original.tx.gas + 30_000)
    assert replacement.nonce == original.tx.nonce
    await resident.send_raw_prepared(w3, replacement)
    assert await devnet.pending_count() == 1  # anvil replaced the original in its pool
    await devnet.mine()
    receipt = await resident.wait(w3, replacement.tx_hash, timeout=10)
    assert [log.recipient for log in token_transfer_logs(receipt)] == [OTHER_INVOICE]
    assert await devnet.token_balance(INVOICE) == 0
    assert await devnet.token_balance(OTHER_INVOICE) == 5 * USDT


# -- the command line ----------------------------------------------------------------------------------------


def wallet_pay(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    mnemonic_file = tmp_path / "resident.mnemonic"
    mnemonic_file.write_text(RESIDENT_MNEMONIC + "\n", encoding="utf-8")
    command = ["wallet", "pay", *args, "--mnemonic-file", str(mnemonic_file)]
    if stdin is None:
        return run_cli(tmp_path, *command)
    return subprocess.run(
        [sys.executable, "-m", "sandbox.cli", *command],
        env=cli_env(tmp_path),
        cwd=tmp_path,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_no_secret(result: subprocess.CompletedProcess[str]) -> None:
    assert "abandon" not in result.stdout + result.stderr


async def test_cli_pays_an_ethereum_uri_with_yes(net: Net, tmp_path: Path) -> None:
    w3, devnet = net.devnet.w3, net.devnet
    uri = ether_uri(INVOICE, 25 * 10**15)
    result = await asyncio.to_thread(wallet_pay, tmp_path, uri, "--rpc", devnet.url, "--yes")
    assert result.returncode == 0, result.stderr
    tx_hash = result.stdout.strip()
    receipt = await w3.eth.get_transaction_receipt(HexStr(tx_hash))
    assert receipt["status"] == 1 and HexBytes(receipt["transactionHash"]).to_0x_hex() == tx_hash
    assert await devnet.eth_balance(INVOICE) == 25 * 10**15
    assert "0.025 ETH" in result.stderr and f"chain id {CHAIN_ID}" in result.stderr
    assert_no_secret(result)


async def test_cli_pays_a_qr_code_image_of_a_token_request(net: Net, tmp_path: Path) -> None:
    devnet = net.devnet
    png = tmp_path / "invoice.png"
    png.write_bytes(qr_png(token_uri(INVOICE, 7_500_000)))
    result = await asyncio.to_thread(wallet_pay, tmp_path, str(png), "--rpc", devnet.url, "--yes")
    assert result.returncode == 0, result.stderr
    receipt = await devnet.w3.eth.get_transaction_receipt(HexStr(result.stdout.strip()))
    [log] = token_transfer_logs(receipt, TOKEN_ADDRESS)
    assert (log.recipient, log.amount_units) == (INVOICE, 7_500_000)
    assert "7.5 tUSDT" in result.stderr
    assert_no_secret(result)


async def test_cli_asks_before_paying_and_refuses_bad_input(net: Net, tmp_path: Path) -> None:
    devnet = net.devnet
    uri = ether_uri(INVOICE, 10**16)

    declined = await asyncio.to_thread(wallet_pay, tmp_path, uri, "--rpc", devnet.url, stdin="n\n")
    assert declined.returncode == 1 and declined.stdout == ""
    assert f"pay 0.01 ETH to {INVOICE} on Ethereum chain id {CHAIN_ID}" in declined.stderr
    assert await devnet.eth_balance(INVOICE) == 0

    confirmed = await asyncio.to_thread(wallet_pay, tmp_path, uri, "--rpc", devnet.url, stdin="y\n")
    assert confirmed.returncode == 0, confirmed.stderr
    assert await devnet.eth_balance(INVOICE) == 10**16

    bad_inputs = (ether_uri(INVOICE, 10**16, chain_id=1), "ethereum:0xnot-an-address?value=1", "nothing.png")
    runs = [asyncio.to_thread(wallet_pay, tmp_path, bad, "--rpc", devnet.url, "--yes") for bad in bad_inputs]
    too_much = token_uri(INVOICE, 10**12)
    *refusals, broke = await asyncio.gather(
        *runs, asyncio.to_thread(wallet_pay, tmp_path, too_much, "--rpc", devnet.url, "--yes")
    )
    for refused in refusals:
        assert refused.returncode == 2, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and refused.stdout == ""
        assert_no_secret(refused)
    assert broke.returncode == 1 and "not enough" in broke.stderr, broke.stderr
    assert await devnet.eth_balance(INVOICE) == 10**16
