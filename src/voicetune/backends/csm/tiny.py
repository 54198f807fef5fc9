"""An UNTRAINED, tiny, randomly initialised CSM base in the real Hugging Face layout (tests, the demo).

It lets tests and the offline demo run every stage (Mimi codes, training, synthesis, export, loading with
``CsmForConditionalGeneration.from_pretrained``) in seconds on a CPU. It produces noise, not speech.

What is small and what is real:

* Backbone 2 layers x 64, depth decoder 2 layers x 32, 8 codebooks of 64 codes (csm-1b: 16 x 2048, 4 x 1024,
  32 codebooks of 2048); the same classes, config keys, prompt format and special tokens as ``sesame/csm-1b``.
* Mimi: the real stride structure (24 kHz in, 12.5 frames/s, so the processor's frame count holds) with 8
  filters, one transformer layer and 8 codebooks of 64 entries. A randomly initialised residual vector
  quantizer has all-zero codebooks and maps every frame to code 0; here each codebook is fitted by k-means to
  the encoder's outputs (and then the residuals) of real speech (the dataset's clips, else espeak-ng's), so
  codes of real speech use many entries of every codebook (tested).
* Tokenizer: a byte-level BPE trained here with the ``tokenizers`` library on the dataset's transcripts (any
  language or script: unknown characters fall back to bytes), with csm-1b's special tokens
  ``<|begin_of_text|>``, ``<|end_of_text|>``, ``<|AUDIO|>``, ``<|audio_eos|>``, and a chat template written
  here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voicetune.backends.csm import layout
from voicetune.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

TINY_NOTE = "UNTRAINED tiny random CSM model for tests and the demo; it cannot produce usable speech"
SAMPLE_RATE = 24000
BOS, EOS, AUDIO, AUDIO_EOS = "<|begin_of_text|>", "<|end_of_text|>", "<|AUDIO|>", "<|audio_eos|>"
SPECIAL_TOKENS = [BOS, EOS, AUDIO, AUDIO_EOS]

# The CSM prompt: per message "<bos>[speaker]text<eos>" followed by the audio placeholder and the audio end
# token when the message has audio (only the last message may have none: the text to speak).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if not (message['role'] is string and message['role'].isdigit()) -%}"
    "{{- raise_exception(\"each message's role must be a speaker id, a string of digits such as '0'\") -}}"
    "{%- endif -%}"
    "{%- set texts = message['content'] | selectattr('type', 'equalto', 'text') | list -%}"
    "{%- set audios = message['content'] | selectattr('type', 'equalto', 'audio') | list -%}"
    "{%- if texts | length != 1 or audios | length > 1 -%}"
    "{{- raise_exception('each message holds one text item and at most one audio item') -}}"
    "{%- endif -%}"
    "{%- if not loop.last and audios | length != 1 -%}"
    "{{- raise_exception('every message but the last needs its audio') -}}"
    "{%- endif -%}"
    "{{- bos_token + '[' + message['role'] + ']' + texts[0]['text'] + eos_token -}}"
    "{%- if audios | length == 1 -%}{{- '<|AUDIO|><|audio_eos|>' -}}{%- endif -%}"
    "{%- endfor -%}"
)

BUILTIN_CORPUS = [
    "The morning light crept slowly across the kitchen table.",
    "Could you tell me where the nearest train station is?",
    "Please remember to close the window before you leave.",
    "El tren sale a las tres desde el andén siete.",
    "¿Dónde has puesto las llaves del coche?",
    "Der Zug fährt um drei Uhr ab.",
    "Merci beaucoup pour votre aide.",
]

TINY_MIMI: dict[str, Any] = {
    "hidden_size": 32,
    "num_filters": 8,
    "codebook_size": 64,
    "codebook_dim": 16,
    "num_quantizers": 8,
    "vector_quantization_hidden_dimension": 16,
    "upsample_groups": 32,
    "num_hidden_layers": 1,
    "intermediate_size": 64,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
TINY_DEPTH: dict[str, Any] = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "num_key_value_heads": 1}
TINY_BACKBONE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}
TINY_SYNTHESIS_SECONDS = 2.0  # generation cap of the tiny base: it babbles until the cap, keep tests fast
KMEANS_ITERATIONS = 12
MAX_AUDIO_CLIPS = 32
# Each clip is also encoded from these sample offsets (a Mimi frame is 1920 samples): frames that straddle
# the originals', so the k-means of later codebooks sees many more points than it has centroids.
SHIFTS = tuple(range(0, 1920, 240))


def train_tokenizer(texts: Sequence[str], vocab_size: int = 384) -> Any:
    """A byte-level BPE (``tokenizers``) on ``texts`` with csm-1b's special tokens first (ids 0-3)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts) or BUILTIN_CORPUS, trainer)
    return tok


def build_processor(tokenizer: Any) -> Any:
    """A ``CsmProcessor`` around ``tokenizer`` (a ``tokenizers.Tokenizer``): 24 kHz feature extractor and the
    CSM chat template."""
    from transformers import CsmProcessor, EncodecFeatureExtractor, PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=EOS)
    features = EncodecFeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0)
    return CsmProcessor(features, fast, chat_template=CHAT_TEMPLATE)


def tiny_config(tokenizer: Any) -> Any:
    """The tiny ``CsmConfig``: token ids from ``tokenizer``, vocabulary sizes from the tiny Mimi."""
    from transformers import CsmConfig, MimiConfig

    codes, n = TINY_MIMI["codebook_size"], TINY_MIMI["num_quantizers"]
    vocab = codes + 3  # as csm-1b: 2048 codes + 3 (2050 is the codebook padding id)
    depth = {**TINY_DEPTH, "num_codebooks": n, "backbone_hidden_size": TINY_BACKBONE["hidden_size"],
             "vocab_size": vocab, "max_position_embeddings": n + 1}
    ids = {name: tokenizer.token_to_id(tok) for name, tok in
           (("bos_token_id", BOS), ("audio_token_id", AUDIO), ("audio_eos_token_id", AUDIO_EOS))}
    return CsmConfig(
        **TINY_BACKBONE,
        num_codebooks=n,
        vocab_size=vocab,
        text_vocab_size=tokenizer.get_vocab_size(),
        codebook_pad_token_id=vocab - 1,
        codebook_eos_token_id=0,
        pad_token_id=ids["audio_token_id"],
        **ids,
        depth_decoder_config=depth,
        codec_config=MimiConfig(**TINY_MIMI).to_dict(),
    )


ESPEAK_SENTENCES = [("en-us", BUILTIN_CORPUS[0]), ("es", BUILTIN_CORPUS[3]), ("de", BUILTIN_CORPUS[5]),
                    ("fr", BUILTIN_CORPUS[6])]


def _espeak(text: str, voice: str) -> np.ndarray | None:
    """espeak-ng's speech of ``text`` at 24 kHz (None when espeak-ng is not installed or fails)."""
    import shutil
    import subprocess
    import tempfile

    from voicetune.audio.io import load_audio

    exe = shutil.which("espeak-ng")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "say.wav"
        try:
            subprocess.run(
                [exe, "-v", voice, "-w", str(wav), text], check=True, capture_output=True, timeout=60
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return load_audio(wav, sr=SAMPLE_RATE)[0]


def _speech(stats_audio: Sequence[Path]) -> list[np.ndarray]:
    """24 kHz mono speech for fitting the codebooks: the given clips, else espeak-ng speech in four languages.
    Without either, voiced synthetic sounds (a warning says so): the codebooks still spread, less like
    speech."""
    from voicetune.audio.io import load_audio

    clips = [load_audio(p, sr=SAMPLE_RATE)[0] for p in list(stats_audio)[:MAX_AUDIO_CLIPS]]
    if not clips:
        clips = [a for a in (_espeak(text, voice) for voice, text in ESPEAK_SENTENCES) if a is not None]
    if not clips:
        logger.warning(
            "no speech to fit the tiny Mimi codebooks to (no --dataset, no espeak-ng): using voiced "
            "synthetic sounds"
        )
        rng = np.random.default_rng(0)
        t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
        for _ in range(4):
            phase = (
                2 * np.pi * np.cumsum(110 + 50 * np.sin(2 * np.pi * rng.uniform(0.3, 2) * t)) / SAMPLE_RATE
            )
            voiced = sum(np.sin(k * phase) * rng.uniform(0.2, 1) / k for k in range(1, 12))
            clips.append(0.3 * voiced / np.abs(voiced).max() + 0.02 * rng.standard_normal(t.size))
    return [np.asarray(c, dtype=np.float32) for c in clips if len(c) >= SAMPLE_RATE // 4]


@torch.no_grad()
def encoder_latents(codec: Any, audios: Sequence[np.ndarray], shifts: Sequence[int] = (0,)) -> torch.Tensor:
    """Mimi's continuous latents (what its quantizer receives), ``[1, channels, frames]`` over all clips, each
    encoded from every sample offset in ``shifts``.

    Read through the quantizer's input, so it works whatever the encoder's internal layout (it changed between
    transformers versions)."""
    captured: list[torch.Tensor] = []
    original = codec.quantizer.encode

    def capture(embeddings: torch.Tensor, num_quantizers: Any = None) -> torch.Tensor:
        captured.append(embeddings.detach().float())
        return original(embeddings, num_quantizers)

    codec.quantizer.encode = capture
    try:
        dtype = next(codec.parameters()).dtype
        for audio in audios:  # one batch of the shifted copies per clip
            n = len(audio) - max(shifts)
            batch = np.stack([audio[s:s + n] for s in shifts])[:, None]
            codec.encode(torch.from_numpy(batch).to(dtype))
    finally:
        del codec.quantizer.encode  # the class's method again
    return torch.cat([c.transpose(0, 1).reshape(c.shape[1], -1) for c in captured], dim=-1)[None]


def _kmeans(
    x: torch.Tensor, k: int, gen: torch.Generator, iterations: int = KMEANS_ITERATIONS
) -> torch.Tensor:
    """``k`` centroids of the rows of ``x`` (Lloyd's algorithm from random rows; empty clusters re-seeded)."""
    if x.shape[0] < k:  # too few frames: jittered copies
        extra = x[torch.randint(x.shape[0], (k - x.shape[0],), generator=gen)]
        x = torch.cat([x, extra + 0.01 * x.std() * torch.randn(extra.shape, generator=gen)])
    centroids = x[torch.randperm(x.shape[0], generator=gen)[:k]].clone()
    for _ in range(iterations):
        assign = torch.cdist(x, centroids).argmin(dim=1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        empty = counts == 0
        centroids = torch.where(empty[:, None], x[torch.randint(x.shape[0], (k,), generator=gen)],
                                sums / counts.clamp(min=1)[:, None])
    return centroids


@torch.no_grad()
def fit_codebooks(codec: Any, audios: Sequence[np.ndarray], seed: int = 0) -> dict[str, int]:
    """Fit every codebook of Mimi's split residual quantizer to speech: k-means on the encoder latents
    (projected by each quantizer's input projection), then on what each level leaves. Returns the number of
    distinct codes the fitted codebooks give these clips, per quantizer level."""
    gen = torch.Generator().manual_seed(seed)
    latents = encoder_latents(codec, audios, SHIFTS)
    distinct: dict[str, int] = {}
    quantizer = codec.quantizer
    for name, rvq in (("semantic", quantizer.semantic_residual_vector_quantizer),
                      ("acoustic", quantizer.acoustic_residual_vector_quantizer)):
        x = rvq.input_proj(latents) if rvq.input_proj is not None else latents
        residual = x[0].T.contiguous()  # [frames, dim]
        for i, layer in enumerate(rvq.layers):
            book = layer.codebook
            centroids = _kmeans(residual, book.embed_sum.shape[0], gen)
            book.embed_sum.copy_(centroids)
            book.cluster_usage.fill_(1.0)
            book.initialized.fill_(1.0)
            book._embed = None  # the cached embed = embed_sum / cluster_usage is recomputed
            assign = torch.cdist(residual, centroids).argmin(dim=1)
            distinct[f"{name}_{i}"] = int(assign.unique().numel())
            residual = residual - centroids[assign]
    return distinct


def make_tiny_csm_base(out: Path | str, corpus_texts: Sequence[str] | None = None,
                       stats_audio: Sequence[Path] | None = None, seed: int = 0) -> Path:
    """Write an untrained tiny CSM base into the folder ``out`` (created if needed; other files are left
    alone).

    ``corpus_texts`` train the tokenizer (default: a few sentences in four languages); ``stats_audio`` (24 kHz
    or any rate) fit the Mimi codebooks (default: espeak-ng speech). Whether ``out`` may be written is decided
    by the caller, :func:`voicetune.backends.tiny.make_tiny_base` (which builds it beside ``out`` and moves it
    in).
    """
    from transformers import CsmForConditionalGeneration

    out = Path(out)
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(list(corpus_texts or []) + BUILTIN_CORPUS[:1])
    processor = build_processor(tokenizer)
    model = CsmForConditionalGeneration(tiny_config(tokenizer)).eval()
    distinct = fit_codebooks(model.codec_model, _speech(stats_audio or []), seed)
    logger.info("tiny Mimi codebooks fitted to speech: distinct codes per level %s", distinct)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    atomic_write_json(out / layout.SIDECAR, {  # last: its presence marks a complete tiny base
        "format": 1, "untrained": True, "note": TINY_NOTE, "speaker_id": 0, "context_texts": {},
        "synthesis_max_seconds": TINY_SYNTHESIS_SECONDS, "codebook_distinct_codes": distinct})
    logger.info("wrote an %s to %s", TINY_NOTE, out)
    return out
