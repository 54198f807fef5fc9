"""Transcript normalisation for TTS training text: spell out what is spoken, keep case and punctuation.

ASR writes "Dr. Smith paid $20 at 10:30"; a TTS model must learn the words that were actually said
("doctor Smith paid twenty dollars at ten thirty"). The ``xtts`` mode uses coqui-tts's own text rules, so
the training text matches what the XTTS backend does to text at synthesis time:

* English: clock times ("10:30" → "10 30", then spoken as numbers), numbers/currency/ordinals/years
  (``english.number_norm.normalize_numbers``: "1999" → "nineteen ninety-nine"), abbreviations
  (``cleaners.expand_abbreviations``), then symbols ("%", "&") with XTTS's ``expand_symbols_multilingual``.
* Other languages: XTTS's ``expand_abbreviations_multilingual``, ``expand_numbers_multilingual`` and
  ``expand_symbols_multilingual`` for the language.

Case and punctuation are kept (XTTS uses punctuation for prosody); the '|' metadata delimiter, control
characters and repeated whitespace are removed. ``none`` only does that clean-up. The raw ASR text is kept
next to it (``ClipRecord.raw_text``).
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections.abc import Callable

logger = logging.getLogger(__name__)

MODES = ("xtts", "none")


def clean_text(text: str) -> str:
    """One line of text safe for the '|'-separated metadata (Coqui's formatter splits on '|' naively)."""
    text = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text.replace("|", " "))
    return re.sub(r"\s+", " ", text).strip()


@functools.lru_cache(maxsize=16)
def _rules(language: str) -> list[Callable[[str], str]]:
    """The coqui-tts text functions for ``language`` (empty when coqui-tts lacks them)."""
    lang = language.split("-")[0].lower()
    try:
        from TTS.tts.layers.xtts.tokenizer import (
            expand_abbreviations_multilingual,
            expand_numbers_multilingual,
            expand_symbols_multilingual,
        )
    except ImportError as e:
        logger.warning("coqui-tts text rules unavailable (%s); transcripts are not normalised", e)
        return []
    if lang == "en":
        from TTS.tts.utils.text.cleaners import expand_abbreviations
        from TTS.tts.utils.text.english.number_norm import normalize_numbers

        return [
            _english_times,
            normalize_numbers,
            lambda t: expand_abbreviations(t, "en"),
            lambda t: expand_symbols_multilingual(t, "en"),
        ]
    return [
        lambda t: expand_abbreviations_multilingual(t, lang),
        lambda t: expand_numbers_multilingual(t, lang),
        lambda t: expand_symbols_multilingual(t, lang),
    ]


def _english_times(text: str) -> str:
    """'10:30' -> '10 30', '9:05' -> '9 oh 5', '7:00' -> "7 o'clock" (numbers are spelled out next)."""

    def say(m: re.Match) -> str:
        h, mm = m.group(1), int(m.group(2))
        if mm == 0:
            return f"{h} o'clock"
        return f"{h} oh {mm}" if mm < 10 else f"{h} {mm}"

    return re.sub(r"\b(\d{1,2}):(\d{2})\b", say, text)


def normalize_transcript(text: str, language: str = "en", mode: str = "xtts") -> str:
    """Training text for ``text`` in ``language`` (see the module doc); ``mode`` is ``xtts`` or ``none``."""
    if mode not in MODES:
        raise ValueError(f"text normalisation mode must be one of {MODES}, got {mode!r}")
    out = clean_text(unicodedata.normalize("NFKC", text))
    if mode == "none" or not out:
        return out
    for rule in _rules(language):
        try:
            out = rule(out)
        except (KeyError, ValueError, IndexError, NotImplementedError, OverflowError) as e:
            # coqui's rule tables lack some languages/number forms: keep the text as it is then
            logger.debug("text rule %s failed on %r (%s); skipped", getattr(rule, "__name__", rule), out, e)
    out = re.sub(r"\s+([,.;:!?])", r"\1", out)  # "percent ." -> "percent."
    return clean_text(out)
