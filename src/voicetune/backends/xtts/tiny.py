"""An UNTRAINED, tiny, randomly initialised XTTS-v2 base model in the real on-disk layout.

It exists so that tests and the offline demo can run the whole pipeline (features, training, synthesis,
export, loading in coqui-tts) in seconds on a CPU. It produces noise, not speech.

What is small and what is not:

* GPT: 2 layers, 64 channels, 4 heads (~0.7 M parameters instead of ~440 M); the same vocabulary of
  1024 DVAE codes (+ start/stop = 1026 audio tokens) and the perceiver conditioning of XTTS-v2.
* DVAE: the XTTS-v2 structure (2 stride-2 layers, so one code per 1024 samples) with 64 channels and one
  residual block; :func:`voicetune.backends.xtts.layout.infer_dvae_hparams` reads the sizes back.
* HiFi-GAN decoder + speaker encoder: ``Xtts`` does not make their size configurable, so they keep the
  real architecture (~22 M parameters, ~90 MB in model.pth) with random weights.
* vocab.json: a BPE trained here with the ``tokenizers`` library, with the special tokens XTTS expects.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from voicetune.backends.gpt_tts.files import compute_mel_norms as compute_mel_stats
from voicetune.backends.xtts import layout
from voicetune.utils.io import atomic_torch_save, atomic_write_text

__all__ = [
    "ALPHABET",
    "BUILTIN_CORPUS",
    "SPECIAL_TOKENS",
    "TINY_DVAE",
    "TINY_GPT",
    "TINY_NOTE",
    "XTTS_LANGUAGES",
    "compute_mel_stats",
    "make_tiny_xtts_base",
    "train_bpe_vocab",
]

logger = logging.getLogger(__name__)

TINY_NOTE = "UNTRAINED tiny random model for tests/demo; not usable for real speech"

# Languages of XTTS-v2; each gets its "[xx]" token in the vocabulary.
XTTS_LANGUAGES = [
    "en",
    "es",
    "fr",
    "de",
    "it",
    "pt",
    "pl",
    "tr",
    "ru",
    "nl",
    "cs",
    "ar",
    "zh-cn",
    "hu",
    "ko",
    "ja",
    "hi",
]
# Ids 0, 1, 2 as in XTTS-v2's vocab.json: the dataset code asserts that 0 ([STOP]) and 1 ([UNK]) never occur.
SPECIAL_TOKENS = ["[STOP]", "[UNK]", "[SPACE]", *[f"[{lang}]" for lang in XTTS_LANGUAGES], "[START]"]
# Every character the English cleaners can leave behind, so that English text never maps to [UNK].
ALPHABET = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;()&%$/+=@#*<>[]_~`^|\\{}")

BUILTIN_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
    "The morning light crept slowly across the kitchen table.",
    "Could you tell me where the nearest train station is?",
    "Please remember to close the window before you leave.",
    "It was the best of times, it was the worst of times.",
    "A journey of a thousand miles begins with a single step.",
    "We will meet again on Thursday afternoon at the old library.",
    "Thank you very much for your help with this project.",
    "The weather today is cold and windy, with a chance of rain.",
    "Numbers like one, two, three and four are easy to say.",
    "Good evening, and welcome to the news at nine o'clock.",
    "They walked together along the river until the sun went down.",
    "Reading books is a wonderful way to learn about the world.",
]

TINY_GPT = {
    "gpt_layers": 2,
    "gpt_n_model_channels": 64,
    "gpt_n_heads": 4,
    "gpt_max_audio_tokens": 256,  # clips up to (256 - 2) * 1024 samples ~ 11.8 s: XTTS's 11.6 s limit fits
    "gpt_max_text_tokens": 202,  # the 200-token training limit + start/stop
    "gpt_max_prompt_tokens": 70,
    "gpt_num_audio_tokens": 1026,
    "gpt_start_audio_token": 1024,
    "gpt_stop_audio_token": 1025,
    "gpt_code_stride_len": 1024,
    "gpt_use_masking_gt_prompt_approach": True,
    "gpt_use_perceiver_resampler": True,
    "decoder_input_dim": 64,  # the HiFi-GAN reads the GPT latents: must equal gpt_n_model_channels
    "d_vector_dim": 512,
}
TINY_DVAE = {"hidden_dim": 64, "codebook_dim": 64, "num_resnet_blocks": 1}
# Generation cap of the tiny model (random GPTs rarely emit the stop token): ~2.2 s of audio.
TINY_SYNTHESIS_MAX_AUDIO_TOKENS = 48


def train_bpe_vocab(texts: list[str], out: Path, vocab_size: int = 384) -> None:
    """Train a BPE in the format VoiceBpeTokenizer reads (Whitespace pre-tokenizer, special tokens first)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from TTS.tts.layers.xtts.tokenizer import multilingual_cleaners

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=ALPHABET,
        min_frequency=1, show_progress=False,
    )
    tok.train_from_iterator([multilingual_cleaners(t, "en") for t in texts], trainer=trainer)
    atomic_write_text(out, tok.to_str(pretty=True))


def _tiny_config(vocab: Path, gpt: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    from TTS.tts.configs.xtts_config import XttsArgs, XttsAudioConfig, XttsConfig
    from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer

    tok = VoiceBpeTokenizer(vocab_file=str(vocab))
    args = XttsArgs(
        **{**TINY_GPT, **(gpt or {})},
        gpt_number_text_tokens=tok.get_number_tokens(),
        gpt_start_text_token=tok.tokenizer.token_to_id("[START]"),
        gpt_stop_text_token=tok.tokenizer.token_to_id("[STOP]"),
    )
    cfg = XttsConfig(
        model_args=args, audio=XttsAudioConfig(), temperature=0.75, repetition_penalty=5.0,
        gpt_cond_len=30, gpt_cond_chunk_len=4, max_ref_len=30,
    )
    data = {"voicetune_note": TINY_NOTE, **cfg.to_dict()}
    data["voicetune"] = {"tiny": True, "synthesis_max_audio_tokens": TINY_SYNTHESIS_MAX_AUDIO_TOKENS}
    return cfg, data


def make_tiny_xtts_base(
    out: Path | str,
    corpus_texts: list[str] | None = None,
    stats_audio: list[Path] | None = None,
    seed: int = 0,
    gpt: dict[str, Any] | None = None,
) -> Path:
    """Write an UNTRAINED, tiny, randomly initialised XTTS-v2 base model folder at ``out``.

    ``corpus_texts`` trains the BPE vocabulary (a built-in English list when None); ``stats_audio``
    (paths) gives the mel statistics (seeded noise when None). ``gpt`` overrides :data:`TINY_GPT` entries
    (e.g. a mid-size GPT for benchmarks; ``decoder_input_dim`` must equal ``gpt_n_model_channels``).
    Same arguments, same weights. Returns ``out``. Every file is written atomically; other files in ``out``
    are left alone.
    """
    import torch
    from TTS.tts.layers.xtts.dvae import DiscreteVAE
    from TTS.tts.models.xtts import Xtts

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    logger.warning("writing %s to %s", TINY_NOTE, out)
    train_bpe_vocab(list(corpus_texts or []) + BUILTIN_CORPUS, out / layout.VOCAB)
    cfg, cfg_dict = _tiny_config(out / layout.VOCAB, gpt)
    mel_stats = compute_mel_stats(stats_audio, seed)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer

        model = Xtts(cfg)
        model.tokenizer = VoiceBpeTokenizer(vocab_file=str(out / layout.VOCAB))
        model.init_models()
        model.mel_stats.copy_(mel_stats)
        dvae = DiscreteVAE(
            **{**layout.DVAE_DEFAULTS, **TINY_DVAE},
            normalization=None, num_tokens=cfg.model_args.gpt_num_audio_tokens - 2,
        )
        dim = cfg.model_args.gpt_n_model_channels
        emb = torch.randn(1, 512, 1)
        speakers = {
            "Tiny Random": {
                "gpt_cond_latent": torch.randn(1, 32, dim) * 0.02,
                "speaker_embedding": emb / emb.norm(dim=1, keepdim=True),
            }
        }

    atomic_write_text(out / layout.CONFIG, json.dumps(cfg_dict, indent=2) + "\n")
    atomic_torch_save({"model": model.state_dict()}, out / layout.MODEL)
    atomic_torch_save(dvae.state_dict(), out / layout.DVAE)
    atomic_torch_save(mel_stats.clone(), out / layout.MEL_STATS)
    atomic_torch_save(speakers, out / layout.SPEAKERS)
    return out
