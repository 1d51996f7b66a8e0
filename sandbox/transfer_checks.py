"""The pilot's own checks for ``cryptocity store migrate-sqlite-to-pg`` (gateway/store/transfer.py).

Row counts and row digests prove the tables arrived; these prove the two things a regulator relies on
still hold on the new backend, read through the same queries the sandbox uses at run time: the ledger's
books (per-account sums of lines and the maintained balances equal on both sides, trial balance zero on
both) and the audit log (the chain verifies on both sides and ends at the same seq and hash). They run
inside the copy's transaction, so a failure rolls the whole copy back. The gateway never imports sandbox,
so the transfer takes them as arguments from the composition root.
"""

from __future__ import annotations

from gateway.store import Tx
from gateway.store.transfer import Check, CheckResult, SnapshotTx, TargetTx
from sandbox.audit.keys import AuditKey
from sandbox.audit.verify import VerifyResult, verify
from sandbox.ledger import store as ledger


async def _lines_per_account(tx: Tx) -> dict[str, tuple[int, int]]:
    rows = await tx.fetchall(
        "SELECT account, SUM(amount_tiyn) AS total, COUNT(*) AS n FROM ledger_lines GROUP BY account"
    )
    return {str(r["account"]): (int(r["total"]), int(r["n"])) for r in rows}


async def ledger_books(source: SnapshotTx, target: TargetTx) -> CheckResult:
    """Every account's lines (sum and count) and maintained balance equal; trial balance 0 on both sides."""
    before, after = await _lines_per_account(source), await _lines_per_account(target)
    kept_before, kept_after = await ledger.balances(source), await ledger.balances(target)
    trial_before, trial_after = await ledger.trial_balance(source), await ledger.trial_balance(target)
    drift = await ledger.verify_balances(target)
    unbalanced = await ledger.unbalanced_entries(target)
    problems = []
    differing = sorted(a for a in before.keys() | after.keys() if before.get(a) != after.get(a))
    if differing:
        problems.append(f"lines differ for {len(differing)} accounts (first: {differing[0]})")
    if kept_before != kept_after:
        problems.append("the maintained balances differ")
    if trial_before or trial_after:
        problems.append(
            f"trial balance {trial_before} tiyn in the source, {trial_after} in the target (not 0)"
        )
    if drift:
        problems.append(f"{len(drift)} maintained balances disagree with their lines in the target")
    if unbalanced:
        problems.append(f"{len(unbalanced)} entries do not sum to zero in the target")
    if problems:
        return CheckResult("ledger", False, "; ".join(problems))
    lines = sum(n for _, n in after.values())
    return CheckResult(
        "ledger", True, f"{len(after)} accounts, {lines} lines: balances equal, trial balance 0 on both sides"
    )


def audit_chain(key: AuditKey | None) -> Check:
    """The audit log verifies on both sides (with ``key`` when given) and ends at the same head."""

    async def audit_chain(source: SnapshotTx, target: TargetTx) -> CheckResult:
        before = await verify(source, key)
        after = await verify(target, key)
        if not before.ok:
            return CheckResult("audit", False, f"the source's log does not verify: {before.verdict()}")
        if not after.ok:
            return CheckResult("audit", False, f"the target's log does not verify: {after.verdict()}")
        if _end(before) != _end(after):
            return CheckResult(
                "audit",
                False,
                f"the source ends at seq {before.last_seq}, the target at seq {after.last_seq} (or hashes differ)",
            )
        return CheckResult("audit", True, after.verdict())

    return audit_chain


def _end(result: VerifyResult) -> tuple[int, int, str | None, str | None]:
    head = result.head
    return result.entries, result.last_seq, result.last_hash, None if head is None else head.hash


def pilot_checks(key: AuditKey | None) -> list[Check]:
    """What ``cryptocity store migrate-sqlite-to-pg`` verifies beyond counts and row digests."""
    return [ledger_books, audit_chain(key)]
