"""Text normalisation and word/character error rates (jiwer), the same for transcripts and renders."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import Any

_APOSTROPHES = "'\u2019\u02bc\u2018`"
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def _number_words(match: re.Match, language: str) -> str:
    """Spell out one number token: "1,000" (thousands separators), "3.5"/"3,5" (decimal), "42"."""
    from num2words import num2words

    token = match.group(0)
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", token):
        token = token.replace(",", "")
    elif re.fullmatch(r"\d+,\d+", token):
        token = token.replace(",", ".")
    parts = [token] if re.fullmatch(r"\d+(?:\.\d+)?", token) else re.split(r"[.,]", token)
    words = []
    for part in parts:
        try:
            words.append(num2words(float(part) if "." in part else int(part), lang=language))
        except (NotImplementedError, OverflowError, ValueError):
            words.append(part)
    return " " + " ".join(words) + " "


def normalize_text(text: str, language: str = "en") -> str:
    """Normalise text for WER/CER so that formatting differences are not counted as errors.

    Steps, in order: Unicode NFKC; lowercase; ``%`` → " percent", ``&`` → " and " (English only);
    ordinals ("21st") and numbers ("1,000", "3.5", "42") spelled out with ``num2words`` in
    ``language`` (left as digits when num2words is missing or lacks the language); apostrophes
    dropped ("don't" → "dont"); every other punctuation or symbol character becomes a space
    (so "well-known" → "well known"); runs of whitespace collapse to one space; trimmed.
    Years are read as cardinals ("1999" → "one thousand nine hundred and ninety nine"), on both
    sides of the comparison, so they only cost errors when the ASR spells them differently.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    if language.startswith("en"):
        text = text.replace("%", " percent ").replace("&", " and ")
    try:
        from num2words import num2words

        def ordinal(m: re.Match) -> str:
            try:
                return " " + num2words(int(m.group(1)), to="ordinal", lang=language) + " "
            except (NotImplementedError, OverflowError, ValueError):
                return m.group(0)

        if language.startswith("en"):
            text = _ORDINAL.sub(ordinal, text)
        text = _NUMBER.sub(lambda m: _number_words(m, language), text)
    except ImportError:
        pass
    text = "".join("" if ch in _APOSTROPHES else ch for ch in text)
    text = "".join(" " if unicodedata.category(ch)[0] in "PSC" else ch for ch in text.lower())
    return " ".join(text.split())


def wer_cer(
    reference: str | Sequence[str], hypothesis: str | Sequence[str], language: str = "en"
) -> dict[str, Any]:
    """Word and character error rates (jiwer) after :func:`normalize_text` on both sides.

    Range [0, inf) (insertions can push it above 1), LOWER is better. With lists, the rates are
    corpus-level (total edits / total reference words), not a mean of per-sentence rates.
    A reference that normalises to nothing counts as 0 errors against an empty hypothesis and
    as 1.0 otherwise.

    Returns ``{"wer", "cer", "hits", "substitutions", "deletions", "insertions", "ref_words"}``.
    """
    import jiwer

    refs = [reference] if isinstance(reference, str) else list(reference)
    hyps = [hypothesis] if isinstance(hypothesis, str) else list(hypothesis)
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    refs = [normalize_text(t, language) for t in refs]
    hyps = [normalize_text(t, language) for t in hyps]
    pairs = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    n_empty_bad = sum(1 for r, h in zip(refs, hyps, strict=True) if not r and h)
    if not pairs:
        rate = 1.0 if n_empty_bad else 0.0
        return {
            "wer": rate,
            "cer": rate,
            "hits": 0,
            "substitutions": 0,
            "deletions": 0,
            "insertions": n_empty_bad,
            "ref_words": 0,
        }
    words = jiwer.process_words([r for r, _ in pairs], [h for _, h in pairs])
    chars = jiwer.process_characters([r for r, _ in pairs], [h for _, h in pairs])
    ref_words = words.hits + words.substitutions + words.deletions
    ref_chars = chars.hits + chars.substitutions + chars.deletions
    insertions = words.insertions + n_empty_bad
    wer = (words.substitutions + words.deletions + insertions) / ref_words
    cer = (chars.substitutions + chars.deletions + chars.insertions + n_empty_bad) / ref_chars
    return {
        "wer": float(wer),
        "cer": float(cer),
        "hits": words.hits,
        "substitutions": words.substitutions,
        "deletions": words.deletions,
        "insertions": insertions,
        "ref_words": ref_words,
    }


def spoken_chars(text: str, language: str = "en") -> int:
    """Letters and digits of the normalised text (numbers spelled out): what speaking takes time for."""
    return sum(ch.isalnum() for ch in normalize_text(text, language))
