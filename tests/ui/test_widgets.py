"""Small HTML pieces of the UI (ui/widgets.py)."""

from __future__ import annotations

from voicetune.ui.widgets import progress_html


def test_progress_shows_counts_as_integers_and_seconds_to_a_tenth():
    assert "files (3/8)</span>" in progress_html(3, 8, "files")
    assert "audio (12.3/24.8)</span>" in progress_html(12.34, 24.802168367346937, "audio")
    assert "done (24/24)</span>" in progress_html(24.0, 24.0, "done", running=False)
    assert "width:50.0%" in progress_html(1, 2, "x") and "vt-done" in progress_html(1, 1, "x", running=False)
    assert "&lt;b&gt;" in progress_html(0, 0, "<b>")
