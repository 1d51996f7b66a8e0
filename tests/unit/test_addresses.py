"""Address derivation from watch-only account keys, checked against published vectors and against a full
private-key derivation done by other code (embit's BIP32, python-bitcoinlib's bech32, eth-keys)."""

from __future__ import annotations

import pytest
from bitcoin import segwit_addr
from embit import base58, bip32, bip39
from embit.networks import NETWORKS
from embit.script import p2wpkh
from embit.util import secp256k1
from eth_keys.datatypes import PrivateKey as EthPrivateKey
from eth_utils.address import is_checksum_address, to_checksum_address

from gateway.addresses import (
    AccountKeyError,
    AddressError,
    BitcoinAccount,
    DerivationError,
    EthereumAccount,
    btc_script_for_address,
    checksum_eth_address,
    is_valid_eth_address,
)

# --- published vectors -------------------------------------------------------------------------------------

ABANDON = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
# BIP84 test vectors: account 0 of the mnemonic above
BIP84_ZPUB = "zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToUG868RvUUkgDKf31mGDtKsAYz2oz2AGutZYs"
BIP84_RECEIVE = ["bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu", "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g"]
BIP84_PUBKEY_0 = "0330d54fd0dd420a6e5f8d3624f5f3482cae350f79d5f0753bf5beef9c2d91af3c"

HARDHAT = "test test test test test test test test test test test junk"
HARDHAT_ADDRESSES = [
    "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266",
    "0x70997970C51812dc3A010C7d01b50e0d17dc79C8",
    "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC",
]
HARDHAT_ACCOUNT_XPUB = "xpub6Ce9NcJvTk36xtLSrJLZqE7wtgA5deCeYs7rSQtreh4cj6ByPtrg9sD7V2FNFLPnf8heNP3FGkeV9qwfzvZNSd54JoNXVsXFYSYwHsnJxqP"

MAIN, TEST = NETWORKS["main"], NETWORKS["test"]
ABANDON_ROOT = bip32.HDKey.from_seed(bip39.mnemonic_to_seed(ABANDON))
HARDHAT_ROOT = bip32.HDKey.from_seed(bip39.mnemonic_to_seed(HARDHAT))
TESTNET_ACCOUNT = ABANDON_ROOT.derive("m/84h/1h/0h")
VPUB = TESTNET_ACCOUNT.to_public(TEST["zpub"]).to_base58()
TPUB = TESTNET_ACCOUNT.to_public(TEST["xpub"]).to_base58()


def public(path: str, version: bytes, root: bip32.HDKey = ABANDON_ROOT) -> str:
    return str(root.derive(path).to_public(version).to_base58())


def forge(version: str, depth: int, child: int, key: bytes, chain_code: bytes = bytes(range(32))) -> str:
    """A base58check extended key with chosen fields, to reach refusals no wallet would export."""
    payload = bytes.fromhex(version) + bytes([depth]) + b"\x01\x02\x03\x04" + child.to_bytes(4, "big")
    return str(base58.encode_check(payload + chain_code + key))


# --- Bitcoin -----------------------------------------------------------------------------------------------


def test_bip84_zpub_is_what_the_mnemonic_gives() -> None:
    assert public("m/84h/0h/0h", MAIN["zpub"]) == BIP84_ZPUB


def test_bip84_first_receive_addresses() -> None:
    account = BitcoinAccount(BIP84_ZPUB)
    assert [account.address(i, "bc") for i in range(2)] == BIP84_RECEIVE
    assert account.public_key(0).hex() == BIP84_PUBKEY_0
    assert account.script_pubkey(0) == bytes.fromhex("0014") + bytes.fromhex(
        "c0cebcd6c3d3ca8c75dc5ec62ebe55330ef910e2"
    )


def test_same_account_in_xpub_serialisation_gives_the_same_addresses() -> None:
    xpub = public("m/84h/0h/0h", MAIN["xpub"])
    by_xpub, by_zpub = BitcoinAccount(xpub), BitcoinAccount(BIP84_ZPUB)
    assert [by_xpub.address(i, "bc") for i in range(5)] == [by_zpub.address(i, "bc") for i in range(5)]
    assert (by_xpub.version_name, by_zpub.version_name) == ("xpub", "zpub")
    assert (by_xpub.normalised, by_zpub.normalised) == (xpub, BIP84_ZPUB)


@pytest.mark.parametrize("key", [VPUB, TPUB], ids=["vpub", "tpub"])
@pytest.mark.parametrize("index", [0, 1, 2, 19, 20, 1000, 2**31 - 1])
def test_testnet_watch_only_matches_full_private_derivation(key: str, index: int) -> None:
    account = BitcoinAccount(key)
    private = ABANDON_ROOT.derive(f"m/84h/1h/0h/0/{index}")  # every step from the seed, hardened ones too
    pubkey = private.key.get_public_key()
    program = account.script_pubkey(index)
    assert account.public_key(index) == pubkey.sec()
    assert program == p2wpkh(pubkey).data
    for hrp in ("tb", "bcrt", "rb"):
        address = account.address(index, hrp)
        # python-bitcoinlib's encoder, independent of the embit one the gateway uses
        assert address == segwit_addr.encode(hrp, 0, list(program[2:]))
        assert segwit_addr.decode(hrp, address) == (0, list(program[2:]))
        assert btc_script_for_address(address, hrp) == program


def test_hrp_variants_share_the_witness_program() -> None:
    account = BitcoinAccount(VPUB)
    addresses = {hrp: account.address(7, hrp) for hrp in ("bc", "tb", "bcrt", "rb")}
    assert addresses["tb"].startswith("tb1q")
    assert addresses["bcrt"].startswith("bcrt1q")
    assert addresses["rb"].startswith("rb1q")
    programs = {tuple(segwit_addr.decode(hrp, a)[1]) for hrp, a in addresses.items()}
    assert len(programs) == 1


def test_whitespace_from_copy_and_paste_is_removed() -> None:
    pasted = f"  {VPUB[:50]}\n{VPUB[50:]}\t\n"
    account = BitcoinAccount(pasted)
    assert account.normalised == VPUB
    assert account.address(0, "tb") == BitcoinAccount(VPUB).address(0, "tb")


def test_repr_does_not_reveal_the_whole_key() -> None:
    text = repr(BitcoinAccount(VPUB))
    assert VPUB not in text
    assert text.startswith("BitcoinAccount(vpub")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (
            TESTNET_ACCOUNT.to_base58(TEST["xprv"]),
            "this is a private key (tprv…); it can spend the funds, so do not send it anywhere. "
            "Send the account's public key (tpub/vpub) instead",
        ),
        (TESTNET_ACCOUNT.to_base58(TEST["zprv"]), "this is a private key (vprv…)"),
        (ABANDON_ROOT.derive("m/84h/0h/0h").to_base58(), "Send the account's public key (xpub/zpub) instead"),
        (
            public("m/84h/1h/0h/0/0", TEST["zpub"]),
            "expected an account-level key (depth 3, m/84'/1'/0'), got depth 5",
        ),
        (
            public("m/84h/0h/0h/0", MAIN["zpub"]),
            "expected an account-level key (depth 3, m/84'/0'/0'), got depth 4 (a chain-level key",
        ),
        (ABANDON_ROOT.to_public().to_base58(), "got depth 0 (a master (root) key)"),
        (public("m/84h/1h/0", TEST["zpub"]), "whose last step is hardened"),
        (public("m/49h/0h/0h", MAIN["ypub"]), "ypub is for wrapped SegWit (BIP49"),
        (public("m/48h/0h/0h/2h", MAIN["Zpub"]), "Zpub is a multisig key"),
        (VPUB[:-1] + ("a" if VPUB[-1] != "a" else "b"), "not a valid extended public key: bad checksum"),
        (VPUB[:40] + VPUB[41:], "it is 110 characters long, an extended key has 111"),
        (VPUB + VPUB, "it is 222 characters long"),
        ("0x1234abcd", "'0' is not a base58 character"),
        ("hello world", "'l' is not a base58 character"),
        ("   ", "no extended public key given"),
        (f"[d34db33f/84'/1'/0']{VPUB}", "looks like an output descriptor"),
        (f"wpkh({VPUB}/0/*)", "looks like an output descriptor"),
        (forge("019DA462", 3, 2**31, b"\x02" + bytes(32)), "unknown key type 'Ltub'"),
        (forge("045F1CF6", 3, 2**31, b"\x00" + bytes(31) + b"\x01"), "this is a private key (vpub…)"),
    ],
)
def test_bad_account_keys_are_refused_with_a_clear_message(key: str, message: str) -> None:
    with pytest.raises(AccountKeyError) as excinfo:
        BitcoinAccount(key)
    assert message in str(excinfo.value)


def test_a_public_key_off_the_curve_is_refused() -> None:
    x = next(x for x in range(1, 100) if not _on_curve(b"\x02" + x.to_bytes(32, "big")))
    key = forge("045F1CF6", 3, 2**31, b"\x02" + x.to_bytes(32, "big"))
    with pytest.raises(AccountKeyError, match="not a point on the secp256k1 curve"):
        BitcoinAccount(key)


def _on_curve(sec: bytes) -> bool:
    try:
        secp256k1.ec_pubkey_parse(sec)
    except ValueError:
        return False
    return True


def test_non_text_key_is_refused() -> None:
    with pytest.raises(AccountKeyError, match="must be given as text"):
        BitcoinAccount(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("index", [-1, 2**31, 2**32, 2**64])
def test_index_out_of_range(index: int) -> None:
    account = BitcoinAccount(VPUB)
    with pytest.raises(DerivationError, match="out of range: non-hardened indexes run from 0 to 2147483647"):
        account.address(index, "tb")
    with pytest.raises(DerivationError):
        account.script_pubkey(index)
    with pytest.raises(DerivationError):
        EthereumAccount(HARDHAT_ACCOUNT_XPUB).address(index)


@pytest.mark.parametrize("index", [True, 1.0, "1", None])
def test_index_must_be_an_int(index: object) -> None:
    with pytest.raises(TypeError):
        BitcoinAccount(VPUB).address(index, "tb")  # type: ignore[arg-type]


@pytest.mark.parametrize("hrp", ["", "BC", "b c", "t-b", "x" * 41, None])
def test_bad_hrp_is_refused(hrp: object) -> None:
    with pytest.raises(AddressError, match="human-readable part"):
        BitcoinAccount(VPUB).address(0, hrp)  # type: ignore[arg-type]


# --- decoding addresses people type -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "hrp", "script"),
    [
        # BIP173 / BIP350 test vectors: P2WPKH (upper case, as in QR codes), P2WSH, P2TR
        ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "bc", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
        (
            "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
            "tb",
            "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262",
        ),
        (
            "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
            "bc",
            "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
        ),
        (BIP84_RECEIVE[1], "bc", "00149c90f934ea51fa0f6504177043e0908da6929983"),
    ],
)
def test_btc_script_for_address(address: str, hrp: str, script: str) -> None:
    assert btc_script_for_address(address, hrp).hex() == script


def _encode(hrp: str, version: int, program: bytes, bech32m: bool) -> str:
    from embit import bech32

    encoding = bech32.Encoding.BECH32M if bech32m else bech32.Encoding.BECH32
    return str(bech32.bech32_encode(encoding, hrp, [version, *bech32.convertbits(program, 8, 5)]))


@pytest.mark.parametrize(
    ("address", "hrp", "message"),
    [
        (BIP84_RECEIVE[0], "tb", "another network (it starts with 'bc1'); expected one starting with 'tb1'"),
        (BIP84_RECEIVE[0][:-1] + "q", "bc", "bad checksum"),
        ("bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fYU", "bc", "not mixed"),
        ("bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyb", "bc", "'b' cannot appear in a bech32 address"),
        ("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2", "bc", "legacy (base58) address"),
        ("3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy", "bc", "legacy (base58) address"),
        ("", "bc", "no address given"),
        ("hello", "bc", "is not a bech32 address"),
        (_encode("bc", 0, bytes(20), bech32m=True), "bc", "SegWit v0 addresses use bech32, not bech32m"),
        (_encode("bc", 1, bytes(32), bech32m=False), "bc", "SegWit v1 addresses use bech32m"),
        (_encode("bc", 2, bytes(32), bech32m=True), "bc", "unsupported address type (SegWit v2"),
        (_encode("bc", 0, bytes(25), bech32m=False), "bc", "unsupported address type (SegWit v0, 25-byte"),
        (_encode("bc", 1, bytes(20), bech32m=True), "bc", "unsupported address type (SegWit v1, 20-byte"),
        ("bc1" + "q" * 88, "bc", "longer than 90 characters"),
    ],
)
def test_btc_script_for_address_refusals(address: str, hrp: str, message: str) -> None:
    with pytest.raises(AddressError) as excinfo:
        btc_script_for_address(address, hrp)
    assert message in str(excinfo.value)


# --- Ethereum ----------------------------------------------------------------------------------------------


def test_hardhat_account_xpub_is_what_the_mnemonic_gives() -> None:
    assert public("m/44h/60h/0h", MAIN["xpub"], HARDHAT_ROOT) == HARDHAT_ACCOUNT_XPUB


def test_hardhat_addresses_from_the_account_xpub_only() -> None:
    account = EthereumAccount(HARDHAT_ACCOUNT_XPUB)
    assert [account.address(i) for i in range(3)] == HARDHAT_ADDRESSES
    assert account.normalised == HARDHAT_ACCOUNT_XPUB


def test_tpub_serialisation_of_the_eth_account_gives_the_same_addresses() -> None:
    tpub = public("m/44h/60h/0h", TEST["xpub"], HARDHAT_ROOT)
    assert [EthereumAccount(tpub).address(i) for i in range(3)] == HARDHAT_ADDRESSES


@pytest.mark.parametrize("index", [0, 5, 2**31 - 1])
def test_eth_watch_only_matches_private_key_derivation(index: int) -> None:
    secret = HARDHAT_ROOT.derive(f"m/44h/60h/0h/0/{index}").key.secret
    expected = EthPrivateKey(secret).public_key.to_checksum_address()
    account = EthereumAccount(HARDHAT_ACCOUNT_XPUB)
    assert account.address(index) == expected
    assert account.address_bytes(index).hex() == expected[2:].lower()


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (HARDHAT_ROOT.derive("m/44h/60h/0h").to_base58(), "this is a private key (xprv…)"),
        (HARDHAT_ROOT.derive("m/44h/60h/0h").to_base58(), "public key (xpub) instead"),
        (
            public("m/44h/60h/0h/0/0", MAIN["xpub"], HARDHAT_ROOT),
            "expected an account-level key (depth 3, m/44'/60'/0'), got depth 5",
        ),
        (
            BIP84_ZPUB,
            "zpub is a Bitcoin key format; an Ethereum account key (m/44'/60'/0') is serialised as xpub",
        ),
        (HARDHAT_ACCOUNT_XPUB[:-2] + "zz", "bad checksum"),
    ],
)
def test_bad_eth_account_keys(key: str, message: str) -> None:
    with pytest.raises(AccountKeyError) as excinfo:
        EthereumAccount(key)
    assert message in str(excinfo.value)


EIP55_EXAMPLES = [
    "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
    "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
    "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
    "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
]


@pytest.mark.parametrize("address", EIP55_EXAMPLES + HARDHAT_ADDRESSES)
def test_eip55_checksum(address: str) -> None:
    assert is_checksum_address(address)  # eth-utils agrees these are the checksummed forms
    assert checksum_eth_address(address.lower()) == address
    assert checksum_eth_address("0x" + address[2:].upper()) == address
    assert checksum_eth_address(address) == address == to_checksum_address(address.lower())
    assert is_valid_eth_address(address)
    assert is_valid_eth_address(address.lower())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD", "bad EIP-55 checksum"),
        ("0xfb6916095ca1df60bb79Ce92ce3ea74c37c5d359", "bad EIP-55 checksum"),  # EIP-681's own example
        ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAe", "expected 0x followed by 40 hex digits"),
        ("5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "expected 0x followed by 40 hex digits"),
        ("0X5AAEB6053F3E94C9B9A09F33669435E7EF1BEAED", "expected 0x followed by 40 hex digits"),
        ("0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeg", "expected 0x followed by 40 hex digits"),
        (" 0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed", "expected 0x followed by 40 hex digits"),
    ],
)
def test_bad_eth_addresses(text: str, message: str) -> None:
    assert not is_valid_eth_address(text)
    with pytest.raises(AddressError) as excinfo:
        checksum_eth_address(text)
    assert message in str(excinfo.value)


@pytest.mark.parametrize("value", [None, 123, b"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"])
def test_non_text_is_not_an_eth_address(value: object) -> None:
    assert not is_valid_eth_address(value)
