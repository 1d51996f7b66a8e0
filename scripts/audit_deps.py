"""Known-vulnerability audit of every package installed in the project's venv (CI runs it).

pip-audit does the audit: it asks PyPI's JSON API for each installed release's advisories (PyPI takes
them from the Python advisory database via OSV). On these machines only the package registries are
reachable, and the registry proxy answers the per-release document (``/pypi/<name>/<version>/json``)
with 404, so pip-audit skips every package as "not found". For a skipped package this script reads the
package document instead (``/pypi/<name>/json``, which the proxy serves): its ``vulnerabilities`` list
is the advisories of the latest release, so it audits the installed release exactly when that is the
latest one. What neither could audit is listed by name, never passed over in silence.

Exit status 1 when any installed release has a known vulnerability (the ids and the fixed versions are
printed), or when pip-audit itself fails; 0 otherwise.

    .venv/bin/python scripts/audit_deps.py
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

PYPI = "https://pypi.org/pypi"
PROJECT = "cryptocity"  # ours, not on PyPI


@dataclass
class Finding:
    name: str
    version: str
    how: str  # "pip-audit", "latest-release document", or "not audited"
    vulnerabilities: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""


def run_pip_audit() -> list[dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off"],
        capture_output=True,
        text=True,
        check=False,
    )
    # pip-audit exits 1 when it found vulnerabilities; its JSON is on stdout either way.
    try:
        report = json.loads(result.stdout)
    except ValueError:
        sys.exit(f"pip-audit failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return list(report.get("dependencies", []))


def from_latest_document(name: str, version: str) -> Finding:
    try:
        with urllib.request.urlopen(f"{PYPI}/{name}/json", timeout=60) as response:  # noqa: S310
            document = json.load(response)
    except (urllib.error.URLError, TimeoutError, ValueError) as exc:
        return Finding(name, version, "not audited", reason=f"package document unavailable: {exc}")
    latest = str(document.get("info", {}).get("version", ""))
    if latest != version:
        return Finding(name, version, "not audited", reason=f"installed {version}, latest {latest}")
    advisories = [v for v in document.get("vulnerabilities", []) if not v.get("withdrawn")]
    return Finding(name, version, "latest-release document", advisories)


def audit() -> list[Finding]:
    findings: list[Finding] = []
    skipped: list[tuple[str, str]] = []
    for dependency in run_pip_audit():
        name = str(dependency["name"])
        # pip-audit leaves the version out of a skipped package: ask the installed distribution
        version = str(dependency.get("version") or importlib.metadata.version(name))
        if name == PROJECT:
            continue
        if "skip_reason" in dependency:
            skipped.append((name, version))
        else:
            findings.append(Finding(name, version, "pip-audit", list(dependency.get("vulns", []))))
    with ThreadPoolExecutor(max_workers=8) as pool:
        findings += pool.map(lambda nv: from_latest_document(*nv), skipped)
    return findings


def main() -> int:
    findings = audit()
    vulnerable = [f for f in findings if f.vulnerabilities]
    unaudited = [f for f in findings if f.how == "not audited"]
    by_how: dict[str, int] = {}
    for f in findings:
        by_how[f.how] = by_how.get(f.how, 0) + 1
    print(
        f"{len(findings)} installed packages: "
        + ", ".join(f"{n} by {how}" for how, n in sorted(by_how.items()))
    )
    for f in unaudited:
        print(f"  not audited: {f.name} {f.version} ({f.reason})")
    for f in vulnerable:
        for v in f.vulnerabilities:
            fixed = ", ".join(v.get("fix_versions") or v.get("fixed_in") or []) or "no fixed release"
            print(f"VULNERABLE {f.name} {f.version}: {v.get('id')} (fixed in {fixed})")
    if vulnerable:
        return 1
    print("no known vulnerability in the audited packages")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
