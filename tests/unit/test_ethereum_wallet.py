"""The resident's Ethereum wallet against an in-process chain (eth-tester with py-evm, automine on).

eth-tester answers the same JSON-RPC methods the wallet uses (chain id 131277322940537), so the whole path
runs: EIP-681 parsing, the chain guard, fee and gas suggestions, balance checks, local signing,
``eth_sendRawTransaction``, receipts and nonces. Its chain is funded from the same mnemonic as the wallet
(with anvil's BIP44 path, which is not eth-tester's default; devnets.md). TestUSDT, the devnet's token, is
deployed from its committed artifact for the ERC-20 cases.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, cast

import pytest
from eth_abi.abi import encode as abi_encode
from eth_account import Account
from eth_tester import EthereumTester, PyEVMBackend  # type: ignore[import-untyped]
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.exceptions import Web3RPCError
from web3.providers.eth_tester import AsyncEthereumTesterProvider

from gateway.payment_uri import Eip681Native, Eip681TokenTransfer, PaymentUriError, build_eip681
from sandbox.devnets.solc import load_test_usdt
from wallets.ethereum import (
    TRANSFER_SELECTOR,
    EthereumWallet,
    EthereumWalletError,
    Fees,
    InsufficientFunds,
    PaymentRejected,
    PaymentReverted,
    WrongChain,
    encode_balance_of,
    encode_transfer,
    token_transfer_logs,
)

MNEMONIC = "test test test test test test test test test test test junk"  # anvil's development mnemonic
TESTER_CHAIN_ID = 131277322940537
SHOP = "0x000000000000000000000000000000000000c0Fe"
OTHER_SHOP = "0x000000000000000000000000000000000000bEEF"
# anvil's well-known development key of m/44'/60'/0'/0/1 (public test data, never a real account)
OWNER = Account.from_key("0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d")
MINT_SELECTOR = bytes.fromhex("40c10f19")  # mint(address,uint256)
GWEI = 10**9


@dataclass
class Chain:
    w3: AsyncWeb3[Any]
    resident: EthereumWallet  # m/44'/60'/0'/0/0 of MNEMONIC, funded with 1,000,000 ETH


@pytest.fixture
def chain() -> Chain:
    backend = PyEVMBackend.from_mnemonic(MNEMONIC, num_accounts=2, hd_path="m/44'/60'/0'/0")
    provider = AsyncEthereumTesterProvider()
    provider.ethereum_tester = EthereumTester(backend)  # the async provider takes no constructor arguments
    return Chain(AsyncWeb3(provider), EthereumWallet.from_mnemonic(MNEMONIC))


async def owner_send(w3: AsyncWeb3[Any], fields: dict[str, Any]) -> Any:
    """Sign and send a transaction of the token owner (funded account 1) outside any wallet; its receipt."""
    base = (await w3.eth.get_block("latest"))["baseFeePerGas"]
    signed = OWNER.sign_transaction(
        {
            "type": 2,
            "chainId": TESTER_CHAIN_ID,
            "nonce": await w3.eth.get_transaction_count(OWNER.address, "pending"),
            "maxFeePerGas": 2 * base + GWEI,
            "maxPriorityFeePerGas": GWEI,
            "value": 0,
            **fields,
        }
    )
    receipt = await w3.eth.wait_for_transaction_receipt(
        await w3.eth.send_raw_transaction(signed.raw_transaction)
    )
    assert receipt["status"] == 1
    return receipt


async def deploy_token(w3: AsyncWeb3[Any], mint_to: str, amount_units: int) -> str:
    """Deploy TestUSDT (the devnet's 6-decimal token) from the owner and mint ``amount_units`` to ``mint_to``."""
    receipt = await owner_send(w3, {"data": load_test_usdt()["bytecode"], "gas": 2_000_000})
    token = str(receipt["contractAddress"])
    mint = MINT_SELECTOR + abi_encode(["address", "uint256"], [mint_to, amount_units])
    await owner_send(w3, {"to": token, "data": mint, "gas": 200_000})
    return token


def native_uri(to: str, value_wei: int, chain_id: int = TESTER_CHAIN_ID) -> str:
    return build_eip681(Eip681Native(to, chain_id, value_wei))


# -- keys ----------------------------------------------------------------------------------------------------


def test_keys_follow_bip44_like_anvil_and_metamask() -> None:
    assert EthereumWallet.from_mnemonic(MNEMONIC).address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    second = EthereumWallet.from_mnemonic(MNEMONIC, index=1)
    assert second.address == OWNER.address == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    assert second.derivation_path == "m/44'/60'/0'/0/1"
    raw = EthereumWallet.from_private_key("ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80")
    assert raw.address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert raw.derivation_path is None
    assert EthereumWallet.from_mnemonic(MNEMONIC, passphrase="x").address != raw.address


def test_bad_keys_are_refused_without_echoing_them() -> None:
    with pytest.raises(EthereumWalletError, match="not a valid BIP39 mnemonic"):
        EthereumWallet.from_mnemonic("test " * 11 + "test")
    with pytest.raises(EthereumWalletError, match="out of range"):
        EthereumWallet.from_mnemonic(MNEMONIC, index=2**31)
    secret = "12" * 31
    with pytest.raises(EthereumWalletError) as refused:
        EthereumWallet.from_private_key(secret)
    assert secret not in str(refused.value)
    wallet = EthereumWallet.from_mnemonic(MNEMONIC)
    assert repr(wallet) == f"EthereumWallet({wallet.address})"  # the address only, never key material


def test_erc20_calldata_matches_the_abi() -> None:
    data = encode_transfer(SHOP.lower(), 12_500_000)
    assert data[:4] == TRANSFER_SELECTOR
    assert data[4:] == abi_encode(["address", "uint256"], [SHOP, 12_500_000])
    assert encode_balance_of(SHOP) == bytes.fromhex("70a08231") + abi_encode(["address"], [SHOP])
    with pytest.raises(EthereumWalletError, match="whole number"):
        encode_transfer(SHOP, 1.5)  # type: ignore[arg-type]
    with pytest.raises(EthereumWalletError, match="positive"):
        encode_transfer(SHOP, 0)
    with pytest.raises(EthereumWalletError, match="checksum"):
        encode_transfer("0x000000000000000000000000000000000000C0Fe", 1)


def test_fee_bump_raises_both_caps_by_at_least_one_wei() -> None:
    assert Fees(100, 10).bumped(25) == Fees(125, 12)
    assert Fees(3, 1).bumped(10) == Fees(4, 2)
    assert Fees(0, 0).bumped(10) == Fees(1, 1)
    with pytest.raises(EthereumWalletError, match="exceeds"):
        Fees(1, 2)


async def test_fees_follow_the_node_and_fall_back_to_one_gwei(
    chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    w3, resident = chain.w3, chain.resident
    real = w3.manager.coro_request
    answers: list[Any] = ["0x77359400", Web3RPCError("the method eth_maxPriorityFeePerGas does not exist")]

    async def priority_fee(method: Any, params: Any, *args: Any, **kwargs: Any) -> Any:
        if method != "eth_maxPriorityFeePerGas":
            return await real(method, params, *args, **kwargs)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer  # over HTTP the answer is a hex quantity

    monkeypatch.setattr(w3.manager, "coro_request", priority_fee)
    base = (await w3.eth.get_block("latest"))["baseFeePerGas"]
    assert await resident.suggest_fees(w3) == Fees(2 * base + 2 * GWEI, 2 * GWEI)
    assert await resident.suggest_fees(w3) == Fees(2 * base + GWEI, GWEI)  # the fallback
    assert answers == []


# -- ether ---------------------------------------------------------------------------------------------------


async def test_native_payment_by_uri_moves_exactly_value_plus_gas(chain: Chain) -> None:
    w3, resident = chain.w3, chain.resident
    value = 123_456_789_000_000_001
    before, shop_before = await resident.balance(w3), await resident.balance(w3, SHOP)
    parent = await w3.eth.get_block("latest")

    payment = await resident.pay_uri(w3, native_uri(SHOP, value))

    receipt = payment.receipt
    assert receipt is not None and receipt["status"] == 1
    assert HexBytes(receipt["transactionHash"]).to_0x_hex() == payment.tx_hash
    fee = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert payment.fee_wei == fee > 0
    assert await resident.balance(w3) == before - value - fee
    assert await resident.balance(w3, SHOP) == shop_before + value
    sent = await w3.eth.get_transaction(payment.tx_hash)
    assert sent["type"] == 2 and sent["nonce"] == 0 and sent["value"] == value
    assert sent["maxPriorityFeePerGas"] == GWEI  # eth_maxPriorityFeePerGas of eth-tester
    assert sent["maxFeePerGas"] == 2 * parent["baseFeePerGas"] + GWEI
    assert sent["gas"] == receipt["gasUsed"] == 21_000
    assert payment.tx.recipient == SHOP and payment.tx.amount_units == value and payment.tx.token is None


async def test_a_request_for_another_chain_is_refused_before_anything_is_sent(chain: Chain) -> None:
    w3, resident = chain.w3, chain.resident
    height, balance = await w3.eth.block_number, await resident.balance(w3)
    for chain_id in (1, 31337, TESTER_CHAIN_ID + 1):
        with pytest.raises(WrongChain, match=f"chain id {chain_id} but the node is on chain id") as refused:
            await resident.pay_uri(w3, native_uri(SHOP, 10**15, chain_id))
        assert refused.value.node_chain_id == TESTER_CHAIN_ID
    with pytest.raises(WrongChain):  # no chain id in the URI means mainnet (EIP-681)
        await resident.pay_uri(w3, f"ethereum:{SHOP}?value=1000")
    with pytest.raises(WrongChain):
        await resident.build_uri(w3, native_uri(SHOP, 10**15, 1))
    assert await w3.eth.block_number == height
    assert await w3.eth.get_transaction_count(resident.address, "pending") == 0
    assert await resident.balance(w3) == balance


async def test_malformed_requests_and_amounts_are_refused(chain: Chain) -> None:
    w3, resident = chain.w3, chain.resident
    with pytest.raises(PaymentUriError):
        await resident.pay_uri(w3, f"ethereum:{SHOP}@{TESTER_CHAIN_ID}?value=1.5")
    with pytest.raises(PaymentUriError):
        await resident.pay_uri(w3, f"bitcoin:{SHOP}")
    with pytest.raises(EthereumWalletError, match="whole number"):
        await resident.send_eth(w3, SHOP, 1.0)  # type: ignore[arg-type]
    with pytest.raises(EthereumWalletError, match="positive"):
        await resident.send_eth(w3, SHOP, 0)
    assert await w3.eth.get_transaction_count(resident.address, "pending") == 0


async def test_insufficient_ether_is_refused_before_sending(chain: Chain) -> None:
    w3, resident = chain.w3, chain.resident
    balance = await resident.balance(w3)
    with pytest.raises(InsufficientFunds, match="not enough"):
        await resident.pay_uri(w3, native_uri(SHOP, balance + 1))
    # the value alone is covered, but not with the gas at the maximum fee
    with pytest.raises(InsufficientFunds, match="of gas"):
        await resident.send_eth(w3, SHOP, balance - 21_000)
    poor = EthereumWallet.from_mnemonic(MNEMONIC, index=5)  # never funded
    with pytest.raises(InsufficientFunds, match="holds 0 ETH"):
        await poor.send_eth(w3, SHOP, 1)
    assert await w3.eth.get_transaction_count(resident.address, "pending") == 0
    assert await resident.balance(w3) == balance


async def test_concurrent_payments_get_distinct_consecutive_nonces(chain: Chain) -> None:
    w3, resident = chain.w3, chain.resident
    await resident.send_eth(w3, SHOP, 1)  # the counter is initialised from the node, then kept locally
    payments = await asyncio.gather(*(resident.send_eth(w3, SHOP, 1_000 + i) for i in range(20)))
    nonces = [p.tx.nonce for p in payments]
    assert sorted(nonces) == list(range(1, 21))
    for payment in payments:
        assert payment.receipt is not None and payment.receipt["status"] == 1
        assert (await w3.eth.get_transaction(payment.tx_hash))["nonce"] == payment.tx.nonce
    assert await w3.eth.get_transaction_count(resident.address, "latest") == 21
    assert await resident.next_nonce(w3) == 21


async def test_wait_false_returns_at_once_and_wait_fetches_the_receipt(chain: Chain) -> None:
    w3, resident = chain.w3, chain.resident
    payment = await resident.pay_uri(w3, native_uri(SHOP, 5), wait=False)
    assert payment.receipt is None and payment.fee_wei is None
    receipt = await resident.wait(w3, payment.tx_hash, timeout=10)
    assert receipt["status"] == 1 and receipt["blockNumber"] >= 1


async def test_a_refused_send_resyncs_the_nonce_from_the_node(chain: Chain) -> None:
    w3, resident = chain.w3, chain.resident
    await resident.send_eth(w3, SHOP, 1)
    # the same key used elsewhere: the wallet's counter is now one behind the chain
    twin = EthereumWallet.from_mnemonic(MNEMONIC)
    await twin.send_eth(w3, SHOP, 2)
    with pytest.raises(PaymentRejected, match="nonce") as refused:
        await resident.send_eth(w3, SHOP, 3)
    assert refused.value.tx.nonce == 1
    retried = await resident.send_eth(w3, SHOP, 3)
    assert retried.tx.nonce == 2 and retried.receipt is not None


async def test_replacement_reuses_the_nonce_with_higher_fees_and_another_recipient(chain: Chain) -> None:
    w3, resident = chain.w3, chain.resident
    original = await resident.build_eth_transfer(w3, SHOP, 10**16)
    assert await resident.next_nonce(w3) == original.nonce + 1  # the nonce was reserved
    replacement = resident.build_replacement(original, to=OTHER_SHOP)
    assert replacement.nonce == original.nonce
    assert replacement.tx_hash != original.tx_hash
    assert replacement.recipient == replacement.to == OTHER_SHOP and replacement.value_wei == 10**16
    assert replacement.fees.max_fee_per_gas >= original.fees.max_fee_per_gas * 110 // 100
    assert replacement.fees.max_priority_fee_per_gas >= original.fees.max_priority_fee_per_gas * 110 // 100

    mined = await resident.send_raw_prepared(w3, replacement, wait=True)
    assert mined.receipt is not None
    assert await resident.balance(w3, OTHER_SHOP) == 10**16
    with pytest.raises(PaymentRejected):  # the original is now a double spend of a mined nonce
        await resident.send_raw_prepared(w3, original)
    assert await resident.balance(w3, SHOP) == 0
    after = await resident.send_eth(w3, SHOP, 1)
    assert after.tx.nonce == original.nonce + 1


async def test_explicit_nonce_builds_reserve_nothing(chain: Chain) -> None:
    w3, resident = chain.w3, chain.resident
    built = await resident.build_eth_transfer(w3, SHOP, 7, nonce=0)
    assert built.nonce == 0 and await resident.next_nonce(w3) == 0
    signer = Account.recover_transaction(built.raw)
    assert signer == resident.address
    with pytest.raises(EthereumWalletError, match="signed by"):
        EthereumWallet.from_mnemonic(MNEMONIC, index=1).build_replacement(built)


# -- tokens --------------------------------------------------------------------------------------------------


async def test_token_payment_by_uri_transfers_exact_units(chain: Chain) -> None:
    w3, resident = chain.w3, chain.resident
    token = await deploy_token(w3, resident.address, 50_000_000)
    assert await resident.token_metadata(w3, token) == ("tUSDT", 6)
    uri = build_eip681(Eip681TokenTransfer(token, TESTER_CHAIN_ID, SHOP, 12_500_001))
    ether_before = await resident.balance(w3)

    payment = await resident.pay_uri(w3, uri)

    assert payment.receipt is not None
    assert payment.tx.to == payment.tx.token == token and payment.tx.recipient == SHOP
    assert payment.tx.value_wei == 0 and payment.tx.data == encode_transfer(SHOP, 12_500_001)
    [log] = token_transfer_logs(payment.receipt, token)
    assert (log.sender, log.recipient, log.amount_units) == (resident.address, SHOP, 12_500_001)
    assert await resident.token_balance(w3, token) == 50_000_000 - 12_500_001
    assert await resident.token_balance(w3, token, SHOP) == 12_500_001
    assert await resident.balance(w3) == ether_before - cast(int, payment.fee_wei)
    assert payment.tx.gas > payment.receipt["gasUsed"]  # headroom over the estimate for contract calls


async def test_insufficient_token_balance_is_refused_before_sending(chain: Chain) -> None:
    w3, resident = chain.w3, chain.resident
    token = await deploy_token(w3, resident.address, 1_000)
    uri = build_eip681(Eip681TokenTransfer(token, TESTER_CHAIN_ID, SHOP, 1_001))
    with pytest.raises(InsufficientFunds, match="holds 1000 base units"):
        await resident.pay_uri(w3, uri)
    with pytest.raises(InsufficientFunds):
        await resident.transfer_token(w3, token, SHOP, 5_000)
    assert await w3.eth.get_transaction_count(resident.address, "pending") == 0


async def test_a_reverted_transfer_raises_payment_reverted_with_the_hash(chain: Chain) -> None:
    w3, resident = chain.w3, chain.resident
    token = await deploy_token(w3, resident.address, 1_000)
    honest = await resident.build_token_transfer(w3, token, SHOP, 1_000)
    # the replacement asks for more than the balance and skips the checks: the contract reverts on chain
    greedy = resident.build_replacement(honest, amount_units=1_000_000)
    with pytest.raises(PaymentReverted) as reverted:
        await resident.send_raw_prepared(w3, greedy, wait=True)
    assert reverted.value.tx_hash == greedy.tx_hash
    assert reverted.value.receipt["status"] == 0
    assert await resident.token_balance(w3, token) == 1_000
    assert (await resident.transfer_token(w3, token, SHOP, 1_000)).tx.nonce == greedy.nonce + 1
