"""Spends from invoice addresses on real nodes: the merchant's wallet sweeps what residents paid, the
watchers record the coins leaving (with the block, gone again if a reorg takes the block), and the
regulator's exposure view shows the open position that is left.

The merchant keys are the demo mnemonic's (the gateway's test merchant), so the tests hold the private
keys of the invoice addresses, as the merchant's own wallet does.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from embit import bip39

from gateway.addresses import btc_script_for_address
from gateway.config import SandboxConfig
from sandbox.demo import DEMO_MNEMONIC
from sandbox.devnets.bitcoin import REGTEST_HRP, BitcoinDevnet
from sandbox.devnets.ethereum import EthereumDevnet
from sandbox.extension import sandbox_extensions
from sandbox.regulator.tokens import RegulatorTokens
from tests.conftest import Gateway, GatewayFactory
from tests.integration import test_ethereum_settlement as eth_settlement
from tests.integration.settlement_helpers import eventually, method
from tests.integration.test_bitcoin_settlement import devnet_env, rpc_of, wait_tip
from wallets.bitcoin import BitcoinWallet
from wallets.ethereum import EthereumWallet

pytestmark = pytest.mark.integration

SMALL = "12500.00"  # settles at 0 confirmations


@pytest.fixture
async def bitcoin(tmp_path: Path) -> AsyncIterator[BitcoinDevnet]:
    async with BitcoinDevnet(log_path=tmp_path / "bcoin.log") as node:
        yield node


@pytest.fixture
async def ethereum(tmp_path: Path) -> AsyncIterator[EthereumDevnet]:
    async with EthereumDevnet(log_path=tmp_path / "anvil.log") as node:
        yield node


async def exposure(gateway: Gateway, token: str) -> dict[str, Any]:
    response = await gateway.client.get("/sandbox/v1/exposure", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    assert body["spends_tracked"] is True
    return body


async def spends(gateway: Gateway, chain: str) -> list[dict[str, Any]]:
    rows = await gateway.store.read(
        lambda tx: tx.fetchall("SELECT * FROM address_spends WHERE chain = ? ORDER BY spend_key", (chain,))
    )
    return [dict(r) for r in rows]


async def test_a_sweep_of_an_invoice_address_leaves_the_position_and_a_reorg_brings_it_back(
    make_gateway: GatewayFactory, bitcoin: BitcoinDevnet
) -> None:
    resident = BitcoinWallet.from_mnemonic(bip39.mnemonic_from_bytes(os.urandom(16)), REGTEST_HRP)
    await bitcoin.fund(resident)
    rpc = rpc_of(bitcoin)
    gateway = await make_gateway(sandbox_extensions(SandboxConfig()), **devnet_env(bitcoin))
    token = (await RegulatorTokens(gateway.store, gateway.clock).issue("exposure")).plaintext
    await wait_tip(gateway, bitcoin)
    kept = await gateway.create_invoice(SMALL, assets=["BTC"])
    swept = await gateway.create_invoice(SMALL, assets=["BTC"])
    await resident.pay_uri(rpc, method(kept, "BTC")["uri"])
    await resident.pay_uri(rpc, method(swept, "BTC")["uri"])
    await bitcoin.mine(1, resident.address(0))
    await wait_tip(gateway, bitcoin)
    paid = method(kept, "BTC")["amount_due_minor"] + method(swept, "BTC")["amount_due_minor"]
    before = (await exposure(gateway, token))["assets"]["BTC"]
    assert (before["received_minor"], before["spent_minor"], before["on_addresses_minor"]) == (
        str(paid),
        "0",
        str(paid),
    )

    # The merchant's wallet moves the swept invoice's coins on (the kept invoice's output stays put).
    merchant = BitcoinWallet.from_mnemonic(DEMO_MNEMONIC, REGTEST_HRP)
    await merchant.scan(rpc)
    swept_address = method(swept, "BTC")["address"]
    swept_script = btc_script_for_address(swept_address, REGTEST_HRP)
    coin = next(u for u in merchant.utxos() if u.script_pubkey == swept_script)
    others = [u.outpoint for u in merchant.utxos() if u.outpoint != coin.outpoint]
    sweep = await merchant.pay(rpc, resident.address(5), coin.amount_sat // 2, exclude=others)
    assert await spends(gateway, "bitcoin") == []  # in the mempool only: not a spend of the position yet
    await bitcoin.mine(1, resident.address(0))
    await wait_tip(gateway, bitcoin)
    [row] = await spends(gateway, "bitcoin")
    assert (row["tx_id"], row["address"], int(row["amount_minor"])) == (
        sweep.txid,
        swept_address,
        coin.amount_sat,
    )
    assert row["payment_key"] == f"{coin.outpoint.txid}:{coin.outpoint.vout}"
    after = (await exposure(gateway, token))["assets"]["BTC"]
    assert after["spent_minor"] == str(coin.amount_sat)
    assert after["on_addresses_minor"] == str(paid - coin.amount_sat)
    assert 0 < after["locked_value_tiyn"] < before["locked_value_tiyn"]

    # A competing branch without the sweep takes its block away: the coins are on the address again.
    await bitcoin.reorg(1)
    await wait_tip(gateway, bitcoin)
    await eventually(lambda: _no_spends(gateway))
    assert (await exposure(gateway, token))["assets"]["BTC"]["on_addresses_minor"] == str(paid)


async def _no_spends(gateway: Gateway) -> bool:
    return not await spends(gateway, "bitcoin")


async def test_ether_and_token_leaving_an_invoice_address_are_spends_with_their_gas(
    make_gateway: GatewayFactory, ethereum: EthereumDevnet
) -> None:
    w3 = ethereum.w3
    resident = EthereumWallet.from_private_key(ethereum.accounts[1].private_key)
    await ethereum.mint(resident.address, 10**12)
    gateway = await make_gateway(sandbox_extensions(SandboxConfig()), **eth_settlement.anvil_env(ethereum))
    token = (await RegulatorTokens(gateway.store, gateway.clock).issue("exposure")).plaintext
    await eth_settlement.wait_tip(gateway, ethereum)
    # Invoice addresses 0-9 of the demo mnemonic are anvil's own funded accounts: use one above them.
    invoice, index = await _invoice_above_dev_accounts(gateway)
    address = method(invoice, "USDT")["address"]
    due_units = method(invoice, "USDT")["amount_due_minor"]
    await resident.transfer_token(w3, ethereum.token_address, address, due_units)
    await resident.send_eth(w3, address, 10**17)  # the merchant's gas money, an ether payment on the invoice
    await eventually(lambda: _payments_seen(gateway, invoice["id"], 2))  # held: the payer is not registered
    await ethereum.mine(1)
    await eth_settlement.wait_tip(gateway, ethereum)

    merchant = EthereumWallet.from_mnemonic(DEMO_MNEMONIC, index=index)
    assert merchant.address.lower() == address.lower()
    # To an address of the merchant's own treasury (not anvil's dev accounts: they are invoice addresses too)
    treasury = EthereumWallet.from_private_key("0x" + os.urandom(32).hex()).address
    moved = await merchant.transfer_token(w3, ethereum.token_address, treasury, due_units)
    sent = await merchant.send_eth(w3, treasury, 10**16)
    await ethereum.mine(1)
    await eth_settlement.wait_tip(gateway, ethereum)
    rows = await spends(gateway, "ethereum")
    fees = await _fee(w3, moved.tx_hash) + await _fee(w3, sent.tx_hash)
    by_asset: dict[str, int] = {}
    for row in rows:
        assert row["address"].lower() == address.lower()
        by_asset[row["asset"]] = by_asset.get(row["asset"], 0) + int(row["amount_minor"])
    assert by_asset == {"USDT": due_units, "ETH": 10**16 + fees}
    body = (await exposure(gateway, token))["assets"]
    assert body["USDT"]["on_addresses_minor"] == "0"
    assert body["USDT"]["locked_value_tiyn"] == 0
    assert body["ETH"]["on_addresses_minor"] == str(10**17 - 10**16 - fees)


async def _payments_seen(gateway: Gateway, invoice_id: str, count: int) -> bool:
    row = await gateway.store.read(
        lambda tx: tx.fetchone("SELECT COUNT(*) AS n FROM payments WHERE invoice_id = ?", (invoice_id,))
    )
    return row is not None and int(row["n"]) == count


async def _invoice_above_dev_accounts(gateway: Gateway) -> tuple[dict[str, Any], int]:
    for _ in range(40):
        invoice = await gateway.create_invoice(SMALL, assets=["ETH", "USDT"])
        row = await gateway.store.read(
            lambda tx, i=invoice["id"]: tx.fetchone(  # type: ignore[misc]
                "SELECT derivation_index FROM invoice_addresses WHERE invoice_id = ? AND chain = 'ethereum'",
                (i,),
            )
        )
        assert row is not None
        if int(row["derivation_index"]) >= 10:
            return invoice, int(row["derivation_index"])
    raise AssertionError("no invoice address above index 9 after 40 invoices")


async def _fee(w3: Any, tx_hash: str) -> int:
    receipt = await w3.eth.get_transaction_receipt(tx_hash)
    return int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])
