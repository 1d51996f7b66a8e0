"""Raw block parsing and matching: watched outputs, payment keys, BIP125 signalling, payer scripts."""

from __future__ import annotations

import pytest
from bitcoin.core import (
    CBlock,
    CMutableTransaction,
    COutPoint,
    CScriptWitness,
    CTxIn,
    CTxInWitness,
    CTxOut,
    CTxWitness,
    b2lx,
    lx,
)
from bitcoin.core.script import CScript
from embit.ec import PrivateKey

from gateway.addresses import BitcoinAccount
from gateway.chains.bitcoin_blocks import (
    BlockParseError,
    block_facts,
    hash160,
    parse_block,
    parse_transaction,
    transaction_facts,
)
from sandbox.demo import demo_account_keys

ACCOUNT = BitcoinAccount(demo_account_keys()[0])
WATCHED = {ACCOUNT.script_pubkey(i): f"inv_{i}" for i in range(5)}
STRANGER = b"\x00\x14" + bytes(20)


def _pubkey(n: int) -> bytes:
    return bytes(PrivateKey((n + 1).to_bytes(32, "big")).get_public_key().sec())


def _spend(
    outputs: list[tuple[bytes, int]], payers: list[int], sequence: int = 0xFFFFFFFF, prev: int = 1
) -> CMutableTransaction:
    """A segwit transaction whose inputs carry P2WPKH witnesses of the given keys (signatures not checked)."""
    vin = [CTxIn(COutPoint(lx(f"{prev + i:064x}"), 0), nSequence=sequence) for i in range(len(payers))]
    vout = [CTxOut(amount, CScript(script)) for script, amount in outputs]
    witness = CTxWitness([CTxInWitness(CScriptWitness([b"\x30" * 71, _pubkey(p)])) for p in payers])
    return CMutableTransaction(vin, vout, witness=witness)


def _coinbase() -> CMutableTransaction:
    return CMutableTransaction(
        [CTxIn(COutPoint(), CScript(b"\x01\x01"))], [CTxOut(5_000_000_000, CScript(STRANGER))]
    )


def test_block_facts_match_watched_outputs_in_order_with_payment_keys() -> None:
    paying = _spend([(STRANGER, 10_000), (ACCOUNT.script_pubkey(3), 25_800)], payers=[7])
    unrelated = _spend([(STRANGER, 99_000)], payers=[8], prev=50)
    two = _spend([(ACCOUNT.script_pubkey(0), 1_000), (ACCOUNT.script_pubkey(1), 2_000)], payers=[9], prev=90)
    block = CBlock(vtx=[_coinbase(), paying, unrelated, two])
    parsed = parse_block(block.serialize())
    facts = list(block_facts(parsed, WATCHED))
    assert [f.txid for f in facts] == [b2lx(paying.GetTxid()), b2lx(two.GetTxid())]
    first = facts[0].matches[0]
    assert (first.vout, first.amount_sat, first.watch) == (1, 25_800, "inv_3")
    assert first.payment_key == f"{b2lx(paying.GetTxid())}:1"
    assert [(m.watch, m.amount_sat) for m in facts[1].matches] == [("inv_0", 1_000), ("inv_1", 2_000)]


def test_nothing_watched_gives_nothing() -> None:
    block = CBlock(vtx=[_coinbase(), _spend([(STRANGER, 1)], payers=[1])])
    assert list(block_facts(parse_block(block.serialize()), WATCHED)) == []
    assert list(block_facts(parse_block(block.serialize()), {})) == []


@pytest.mark.parametrize(
    ("sequence", "signals"), [(0xFFFFFFFF, False), (0xFFFFFFFE, False), (0xFFFFFFFD, True), (0, True)]
)
def test_bip125_signalling_follows_nsequence(sequence: int, signals: bool) -> None:
    tx = _spend([(ACCOUNT.script_pubkey(2), 5_000)], payers=[1], sequence=sequence)
    facts = transaction_facts(parse_transaction(tx.serialize()), WATCHED)
    assert facts is not None and facts.rbf_signalling is signals


def test_payer_scripts_come_from_witness_public_keys() -> None:
    tx = _spend([(ACCOUNT.script_pubkey(4), 7_000)], payers=[3, 4, 3])
    facts = transaction_facts(parse_transaction(tx.serialize()), WATCHED)
    assert facts is not None
    expected = [b"\x00\x14" + hash160(_pubkey(3)), b"\x00\x14" + hash160(_pubkey(4))]
    assert list(facts.payer_scripts) == expected  # distinct, in input order: two owners are visible
    # a payer script is an address the resident could have registered
    own = BitcoinAccount(demo_account_keys()[0])
    assert b"\x00\x14" + hash160(own.public_key(0)) == own.script_pubkey(0)


def test_legacy_inputs_have_no_payer_script() -> None:
    legacy = CMutableTransaction(
        [CTxIn(COutPoint(lx("11" * 32), 0), CScript(b"\x00"))],
        [CTxOut(3_000, CScript(ACCOUNT.script_pubkey(0)))],
    )
    facts = transaction_facts(parse_transaction(legacy.serialize()), WATCHED)
    assert facts is not None and facts.payer_scripts == ()


@pytest.mark.parametrize("raw", [b"", b"\x01\x02\x03", bytes(79)])
def test_garbage_is_a_parse_error(raw: bytes) -> None:
    with pytest.raises(BlockParseError):
        parse_block(raw)
    with pytest.raises(BlockParseError):
        parse_transaction(raw)


def test_a_truncated_block_is_a_parse_error() -> None:
    raw = CBlock(vtx=[_coinbase(), _spend([(STRANGER, 1)], payers=[1])]).serialize()
    with pytest.raises(BlockParseError):
        parse_block(raw[:-10])
