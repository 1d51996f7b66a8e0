"""``cryptocity sandbox …``: the sandbox operator's commands (residents, wallets, merchant profiles, tokens,
the monthly report).

The KYC operator registers residents and their wallets; the pilot's operator sets merchant categories and
issues regulator tokens. Every change goes through the registry, so it is an outbox event the audit log
records, and each command prints what it did as JSON. ``report`` writes the month's report for the
regulator (sandbox/report/cli.py; docs/sandbox-report.md).
"""

from __future__ import annotations

import argparse
import json
import sys

from gateway.clock import SystemClock
from gateway.config import Config
from gateway.store import open_store
from sandbox.limits import Tier
from sandbox.registry import Category, NotRegistered, Registry, RegistryError
from sandbox.regulator.tokens import RegulatorTokens
from sandbox.report.cli import add_report_command, run_report


def add_sandbox_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sandbox = sub.add_parser(
        "sandbox", help="the sandbox operator's commands: residents, wallets, tokens, the monthly report"
    )
    ssub = sandbox.add_subparsers(dest="sandbox_command", required=True)

    resident = ssub.add_parser("resident", help="register or change a pseudonymous resident")
    rsub = resident.add_subparsers(dest="resident_command", required=True)
    add = rsub.add_parser("add", help="register a resident; prints its id")
    add.add_argument("--tier", choices=[t.value for t in Tier], required=True)
    add.add_argument("--originator-data", action="store_true", help="travel-rule originator data is on file")
    change = rsub.add_parser("set", help="change a resident's tier, originator data or status")
    change.add_argument("resident_id")
    change.add_argument("--tier", choices=[t.value for t in Tier])
    change.add_argument("--originator-data", choices=["yes", "no"])
    change.add_argument("--status", choices=["active", "suspended"])

    wallet = ssub.add_parser("wallet", help="register a payer wallet for a resident")
    wallet.add_argument("resident_id")
    wallet.add_argument("--chain", choices=["bitcoin", "ethereum"], required=True)
    wallet.add_argument("owner", help="Bitcoin address or output script (hex), or Ethereum address")
    wallet.add_argument("--label")

    merchant = ssub.add_parser("merchant", help="set a merchant's category")
    merchant.add_argument("merchant_id")
    merchant.add_argument("--category", choices=[c.value for c in Category], required=True)

    token = ssub.add_parser("token", help="regulator API tokens")
    tsub = token.add_subparsers(dest="token_command", required=True)
    create = tsub.add_parser("create", help="issue a regulator token (shown once)")
    create.add_argument("--label", default="regulator")
    revoke = tsub.add_parser("revoke", help="revoke a regulator token by its id")
    revoke.add_argument("token_id")

    add_report_command(ssub)  # report --month YYYY-MM [--out DIR]


async def run_sandbox_command(args: argparse.Namespace, config: Config) -> int:
    store = await open_store(config.store)
    clock = SystemClock()
    registry = Registry(store, clock)
    try:
        if args.sandbox_command == "report":
            return await run_report(args, config, store, clock)
        if args.sandbox_command == "resident" and args.resident_command == "add":
            resident = await registry.add_resident(Tier(args.tier), originator_data=args.originator_data)
            print(json.dumps(resident.view()))
        elif args.sandbox_command == "resident":
            data = None if args.originator_data is None else args.originator_data == "yes"
            tier = Tier(args.tier) if args.tier else None
            resident = await registry.update_resident(
                args.resident_id, tier=tier, originator_data=data, status=args.status
            )
            print(json.dumps(resident.view()))
        elif args.sandbox_command == "wallet":
            owner = await registry.register_wallet(args.resident_id, args.chain, args.owner, args.label)
            print(json.dumps({"resident_id": args.resident_id, "chain": args.chain, "owner": owner}))
        elif args.sandbox_command == "merchant":
            profile = await registry.set_merchant_profile(args.merchant_id, category=Category(args.category))
            print(json.dumps({"merchant_id": args.merchant_id, "category": profile.category.value}))
        elif args.token_command == "create":  # noqa: S105 - a subcommand name
            issued = await RegulatorTokens(store, clock).issue(args.label)
            print(json.dumps({"id": issued.id, "label": issued.label, "token": issued.plaintext}))
            print("Store the token now: it is shown only once.", file=sys.stderr)
        else:
            if not await RegulatorTokens(store, clock).revoke(args.token_id):
                print(f"not found: no active token {args.token_id}", file=sys.stderr)
                return 1
            print(f"revoked {args.token_id}")
        return 0
    except RegistryError as exc:
        print(f"invalid: {exc}", file=sys.stderr)
        return 2
    except NotRegistered as exc:
        print(f"not found: {exc}", file=sys.stderr)
        return 1
    finally:
        await store.close()
