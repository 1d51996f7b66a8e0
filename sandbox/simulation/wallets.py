"""Simulated residents' wallets: keys derived from the run's seed in memory, funded in bulk at start.

Bitcoin: one BIP84 account per resident (``m/84'/1'/i'`` under a master key made from the seed, with a
gap of one, so a resident costs a few derivations and not a password stretch), funded by one coin from
the funder's fan-out transactions (credited to the wallet directly: no per-wallet chain scan). Its change
goes to its own change addresses, which are registered with the sandbox like the receiving one.

Ethereum: one key per resident (SHA-256 of the seed and the index), given ether with ``anvil_setBalance``
and TestUSDT with minted transfers, so every token payment is a real ERC-20 transfer on chain.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from embit import bip32

from sandbox.devnets.bitcoin import REGTEST_HRP, BitcoinDevnet
from sandbox.devnets.ethereum import EthereumDevnet
from wallets.bitcoin import CHANGE, EXTERNAL, BitcoinWallet, Outpoint
from wallets.ethereum import EthereumWallet

BTC_FUNDING_SAT = 5_000_000  # 0.05 BTC, about 2.4 M KZT: many days of tickets
ETH_FUNDING_WEI = 10 * 10**18
USDT_FUNDING_UNITS = 20_000 * 10**6  # 20,000 tUSDT, about 10 M KZT
CHANGE_SCRIPTS_REGISTERED = 8  # change addresses registered ahead (one is used per payment)
FAN_OUT_BATCH = 500


def _seed_bytes(seed: int, label: str) -> bytes:
    return hashlib.sha256(f"cryptocity-simulation:{seed}:{label}".encode()).digest()


@dataclass(slots=True)
class ResidentWallets:
    btc: BitcoinWallet | None
    eth: EthereumWallet | None


class WalletFactory:
    """Every simulated key, derived on demand from the seed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._btc_master = bip32.HDKey.from_seed(_seed_bytes(seed, "bitcoin-master"))

    def bitcoin(self, index: int) -> BitcoinWallet:
        account = self._btc_master.derive(f"m/84h/1h/{index}h")
        return BitcoinWallet(account, REGTEST_HRP, gap=1, acceptance_wait_seconds=5.0)

    def ethereum(self, index: int) -> EthereumWallet:
        return EthereumWallet.from_private_key("0x" + _seed_bytes(self.seed, f"ethereum:{index}").hex())

    def merchant_keys(self, index: int) -> tuple[bip32.HDKey, bip32.HDKey]:
        """(BIP84 testnet account, BIP44 ETH account) private keys of simulated merchant ``index``."""
        root = bip32.HDKey.from_seed(_seed_bytes(self.seed, f"merchant:{index}"))
        return root.derive("m/84h/1h/0h"), root.derive("m/44h/60h/0h")


def registered_scripts(wallet: BitcoinWallet) -> list[str]:
    """The scripts the sandbox is told about: the receiving address and the next change addresses."""
    scripts = [wallet.script_pubkey(0, chain=EXTERNAL).hex()]
    scripts += [wallet.script_pubkey(i, chain=CHANGE).hex() for i in range(CHANGE_SCRIPTS_REGISTERED)]
    return scripts


async def fund_bitcoin(
    devnet: BitcoinDevnet, funder: BitcoinWallet, wallets: Sequence[BitcoinWallet]
) -> None:
    """One coin of BTC_FUNDING_SAT to each wallet's first address, confirmed, credited without a scan."""
    assert devnet.rpc is not None
    rpc = devnet.rpc
    for start in range(0, len(wallets), FAN_OUT_BATCH):
        batch = wallets[start : start + FAN_OUT_BATCH]
        outputs = [(w.script_pubkey(0, chain=EXTERNAL), BTC_FUNDING_SAT) for w in batch]
        payment = funder.build_transaction(outputs)
        await funder.broadcast(rpc, payment)
        for vout, wallet in enumerate(batch):
            wallet.credit(Outpoint(payment.txid, vout), BTC_FUNDING_SAT, outputs[vout][0], None)
    await devnet.mine(1, funder.address(0))


async def fund_ethereum(
    devnet: EthereumDevnet, wallets: Sequence[EthereumWallet], usdt: Sequence[bool]
) -> None:
    """Ether for gas and payments to every wallet, and tUSDT to those that pay in the token; mined."""
    for wallet, wants_token in zip(wallets, usdt, strict=True):
        await devnet.call("anvil_setBalance", wallet.address, hex(ETH_FUNDING_WEI))
        if wants_token:
            await devnet.mint(wallet.address, USDT_FUNDING_UNITS, wait=False)
    await devnet.mine_until_pool_empty()
