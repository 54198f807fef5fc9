import pytest

from voicetune.data.textnorm import clean_text, normalize_transcript


def test_english_numbers_times_abbreviations_and_symbols_are_spelled_out_keeping_case_and_punctuation():
    out = normalize_transcript("Dr. Smith paid $20 at 10:30 on the 3rd, in 1999, with 25% off & more.", "en")
    assert out == (
        "doctor Smith paid twenty dollars at ten thirty on the third, in nineteen ninety-nine, "
        "with twenty-five percent off and more."
    )


def test_other_languages_use_xtts_rules_and_none_only_cleans():
    assert "zwanzig" in normalize_transcript("Er zahlte 20 Euro.", "de")
    assert normalize_transcript("It costs 5 | dollars\n now", "en", "none") == "It costs 5 dollars now"
    with pytest.raises(ValueError):
        normalize_transcript("x", "en", "fancy")


def test_clean_text_removes_the_delimiter_and_control_characters():
    assert clean_text("  a | b\n c\x00d  ") == "a b c d"
