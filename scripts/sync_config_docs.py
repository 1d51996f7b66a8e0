"""Copy config.toml into docs/configuration.md between its config markers (a test checks they match)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START = "<!-- config:start -->\n```toml\n"
END = "```\n<!-- config:end -->"


def main() -> None:
    doc = ROOT / "docs" / "configuration.md"
    text = doc.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(head + START + (ROOT / "config.toml").read_text() + END + tail)


if __name__ == "__main__":
    main()
