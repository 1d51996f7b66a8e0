"""Languages of the checkout page: message catalogues and the choice of language for a request.

Residents of the pilot read Kazakh, Russian or English, so every visible text lives in a catalogue
(``locales/<code>.json``, flat ``key -> text`` with ``{name}`` placeholders) and templates never hold
prose. The catalogues must have the same keys (a test keeps them so), which is why a missing key is an
error here instead of a silent fallback: a half-translated page is a bug to catch, not to hide.

The choice is, in order: an explicit ``?lang=`` (a switcher link, then remembered in a cookie), the cookie,
the browser's ``Accept-Language`` by q-value, and English. Texts are phrased to avoid plural forms
("Confirmations: 1 of 3"), so no plural rules are needed for the three languages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Final

__all__ = [
    "DEFAULT_LANGUAGE",
    "LANGUAGES",
    "LANG_COOKIE",
    "Translator",
    "catalogue",
    "choose_language",
    "parse_accept_language",
    "translator",
]

LANGUAGES: Final = ("kk", "ru", "en")  # the switcher's order: the state language first
DEFAULT_LANGUAGE: Final = "en"
LANG_COOKIE: Final = "cc_lang"
_LOCALES: Final = Path(__file__).parent / "locales"


@cache
def catalogue(language: str) -> Mapping[str, str]:
    """The messages of one language, read once per process (they ship with the code)."""
    if language not in LANGUAGES:
        raise KeyError(f"no catalogue for language {language!r}")
    data = json.loads((_LOCALES / f"{language}.json").read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{language}.json must be one object of strings")
    return data


@dataclass(frozen=True, slots=True)
class Translator:
    """Looks messages up in one language; templates call it as ``t("key", name=value)``."""

    language: str

    def __call__(self, key: str, /, **params: object) -> str:
        text = catalogue(self.language)[key]  # KeyError: a key missing from a catalogue is a bug
        return text.format(**params) if params else text


@cache
def translator(language: str) -> Translator:
    return Translator(language)


def parse_accept_language(header: str) -> list[str]:
    """Language ranges of an ``Accept-Language`` header, best first (RFC 9110 q-values; q=0 = not wanted).

    Ties keep the header's order, as browsers list their preference first. Malformed parts are skipped:
    a header is a hint, never a reason to fail the page.
    """
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        tag = tag.strip().lower()
        if not tag:
            continue
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = -1.0
        if 0 < quality <= 1:
            ranked.append((-quality, position, tag))
    return [tag for _, _, tag in sorted(ranked)]


def _supported(tag: str | None) -> str | None:
    if not tag:
        return None
    primary = tag.strip().lower().split("-")[0]
    return primary if primary in LANGUAGES else None


def choose_language(query: str | None, cookie: str | None, accept_language: str | None) -> str:
    """The page language: ``?lang=``, then the remembered cookie, then Accept-Language, then English."""
    for explicit in (query, cookie):
        chosen = _supported(explicit)
        if chosen is not None:
            return chosen
    for tag in parse_accept_language(accept_language or ""):
        if tag == "*":
            return DEFAULT_LANGUAGE
        chosen = _supported(tag)
        if chosen is not None:
            return chosen
    return DEFAULT_LANGUAGE
