"""The review table's filter, sort and paging over thousands of clips, and its HTML (a player and an Edit
button per row, every score shown)."""

from __future__ import annotations

import random
from pathlib import Path

from voicetune.data.manifest import ClipRecord
from voicetune.ui.clips import ClipQuery, counts, query, score_keys, score_value, table_html


def _clips(n: int, seed: int = 0) -> list[ClipRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kept = rng.random() > 0.2
        quality = {"snr_db": round(rng.uniform(5, 45), 2), "silence_ratio": rng.random(), "limited": False}
        if i % 7:  # some clips lack a score
            quality["mos"] = round(rng.uniform(1, 5), 2)
        out.append(
            ClipRecord(
                id=f"c{i:05d}",
                audio_file=f"{'wavs' if kept else 'quarantine'}/c{i:05d}.wav",
                source_file="s.wav",
                start=0.0,
                end=2.0,
                duration=round(rng.uniform(1, 11), 3),
                text=f"sentence number {i}",
                language="en",
                split=rng.choice(["train", "eval"]) if kept else "",
                status="kept" if kept else "quarantined",
                reasons=[] if kept else ["low SNR"],
                asr={"avg_logprob": -rng.random(), "model": "tiny"},
                quality=quality,
                needs_review=not kept and i % 3 == 0,
            )
        )
    return out


def test_every_numeric_score_can_sort_and_filter():
    records = _clips(50)
    keys = score_keys(records)
    assert keys[0] == "duration"
    assert {"asr.avg_logprob", "quality.snr_db", "quality.silence_ratio", "quality.mos"} <= set(keys)
    assert "quality.limited" not in keys and "asr.model" not in keys  # booleans and text are not scores
    for key in keys:
        for desc in (False, True):
            page = query(records, ClipQuery(sort=key, descending=desc, page_size=1000))
            values = [score_value(r, key) for r in page.rows]
            present = [v for v in values if v is not None]
            assert present == sorted(present, reverse=desc)
            assert all(v is None for v in values[len(present):])  # clips without the score come last


def test_thousands_of_clips_are_paged_and_filtered():
    records = _clips(5000)
    q = ClipQuery(
        status="quarantined", score="quality.snr_db", low=10, high=20, sort="quality.snr_db", page_size=25
    )
    first = query(records, q)
    expected = [r for r in records if r.status != "kept" and 10 <= r.quality["snr_db"] <= 20]
    assert first.total == len(expected) and first.pages == -(-len(expected) // 25) and len(first.rows) == 25
    seen = []
    for n in range(1, first.pages + 1):
        seen += query(records, ClipQuery(**{**q.__dict__, "page": n})).rows
    assert sorted(r.id for r in seen) == sorted(r.id for r in expected)
    assert query(records, ClipQuery(page=10_000)).page == query(records, ClipQuery()).pages  # clamped
    review = query(records, ClipQuery(status="needs review", page_size=10_000)).rows
    assert review and all(r.needs_review for r in review)
    found = query(records, ClipQuery(search="number 4321")).rows
    assert [r.id for r in found] == ["c04321"]
    assert counts(records)["clips"] == 5000


def test_the_table_has_a_player_an_edit_button_and_every_score_per_row():
    records = _clips(30)
    keys = score_keys(records)
    page = query(records, ClipQuery(page_size=10, sort="quality.snr_db"))
    html = table_html(
        page, keys, Path("/ws/datasets/d"), lambda p: f"/file={p}", ClipQuery(sort="quality.snr_db")
    )
    assert html.count("<audio ") == 10 and html.count("class='vt-edit'") == 10
    assert "/file=/ws/datasets/d/wavs/" in html or "/file=/ws/datasets/d/quarantine/" in html
    assert "data-sort='quality.snr_db'" in html and "SNR dB ▲" in html
    assert all(f"data-clip='{r.id}'" in html for r in page.rows)
    nasty = _clips(1)
    nasty[0].text = "<script>alert(1)</script>"
    assert "<script>" not in table_html(query(nasty, ClipQuery()), keys, Path("/d"), str, ClipQuery())
