"""The GPT-TTS feature cache (backends/gpt_tts/features.py): a cache file is trusted only when it is
voicetune's record of this version; anything else is recomputed. The backends' own feature tests are in
tests/backends/xtts/test_features.py and tests/backends/tortoise/test_backend.py."""

from __future__ import annotations

import torch

from voicetune.backends.gpt_tts.features import collate_codes, load_cached


def test_only_a_readable_record_of_this_version_is_reused(tmp_path, caplog):
    good = tmp_path / "good.pt"
    torch.save({"version": 3, "audio_codes": torch.arange(4)}, good)
    assert torch.equal(load_cached(good, 3)["audio_codes"], torch.arange(4))
    assert load_cached(good, 4) is None  # another feature version: recomputed
    assert load_cached(tmp_path / "absent.pt", 3) is None
    torn = tmp_path / "torn.pt"
    torn.write_bytes(good.read_bytes()[:40])
    assert load_cached(torn, 3) is None and "torn.pt is unreadable" in caplog.text
    not_a_dict = tmp_path / "list.pt"
    torch.save([1, 2], not_a_dict)
    assert load_cached(not_a_dict, 3) is None


def test_collate_pads_text_with_zero_and_codes_with_the_stop_code():
    items = [{"text_tokens": torch.tensor([5, 6, 7]), "audio_codes": torch.tensor([1, 2]),
              "wav_length": torch.tensor(2048)},
             {"text_tokens": torch.tensor([8]), "audio_codes": torch.tensor([3, 4, 5, 6]),
              "wav_length": torch.tensor(4096)}]
    batch = collate_codes(items, stop_audio_token=99)
    assert batch["text_inputs"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["audio_codes"].tolist() == [[1, 2, 99, 99], [3, 4, 5, 6]]
    assert batch["text_lengths"].tolist() == [3, 1] and batch["wav_lengths"].tolist() == [2048, 4096]
