"""The book's helpers, imported by the notebooks: exercise checkers (``checks``) and figures
(``plotting``), chapter by chapter in the order of the book.

The checkers speak the reader's language: English by default (or ``$QFORMER_LITE_LANG``), and
Japanese after ``set_language("ja")``, which every chapter of the Japanese edition calls."""

from __future__ import annotations

import os

LANGUAGES = ("en", "ja")
_language = os.environ.get("QFORMER_LITE_LANG", "en")


def set_language(lang: str) -> None:
    """The language of the checkers' messages: ``"en"`` or ``"ja"``."""
    global _language
    if lang not in LANGUAGES:
        raise ValueError(f"set_language expects one of {LANGUAGES}, got {lang!r}")
    _language = lang


def language() -> str:
    """The language the checkers speak now."""
    return _language if _language in LANGUAGES else "en"
