"""XTTS-v2 (coqui-tts) backend: finetune the GPT of XTTS on cached features, synthesize, export.

What is trained: the GPT (text + audio-code language model with its conditioning encoder/perceiver), as
in Coqui's GPTTrainer. The HiFi-GAN decoder, its speaker encoder and the DVAE stay frozen. Coqui's
``Trainer``/``GPTTrainer`` are not used: voicetune's loop drives ``GPT.forward`` directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pickle
import re
import shutil
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from voicetune.backends.base import Backend, BaseModelError, Batch, FeatureStore, Progress, Waveform
from voicetune.backends.gpt_tts.files import has_untrained_note
from voicetune.backends.xtts import layout
from voicetune.backends.xtts.options import XttsOptions
from voicetune.config import TrainConfig
from voicetune.data.manifest import Clip
from voicetune.utils.io import atomic_path, atomic_torch_save, atomic_write_text, file_sha256

logger = logging.getLogger(__name__)

_INFERENCE_KEYS = layout.INFERENCE_ONLY_GPT_PREFIXES  # keys of the GPT's inference-only aliases


class XttsBackend(Backend):
    """The :class:`~voicetune.backends.base.Backend` for XTTS-v2.

    ``synthesis_max_audio_tokens`` caps generation (one token = 1024 samples at 22.05 kHz, ~46 ms);
    by default the cap of config.json's ``voicetune.synthesis_max_audio_tokens`` (the tiny model sets it)
    or the model's own maximum.
    """

    name = "xtts"
    options = XttsOptions
    base_layout = "XTTS-v2 folder: config.json, model.pth, dvae.pth, mel_stats.pth, vocab.json"
    loss_parts: ClassVar[dict[str, str]] = {"text_ce": "text", "mel_ce": "mel"}
    supports_cuda_graphs = True  # the packed loss (speed.py): graph_inputs gives its tensors
    synthesis_batch_size = 16  # texts per generation pass (synthesize_batch): a probe set, two seeds each

    # ---------------------------------------------------------------- class level
    @classmethod
    def make_tiny_base(cls, out: Path, *, corpus_texts: Sequence[str] = (), stats_audio: Sequence[Path] = (),
                       seed: int = 0) -> Path:
        """A tiny random XTTS-v2 folder (backends/xtts/tiny.py): its BPE vocabulary is trained on
        ``corpus_texts`` and its mel statistics come from ``stats_audio``."""
        from voicetune.backends.xtts.tiny import make_tiny_xtts_base

        return make_tiny_xtts_base(Path(out), corpus_texts=list(corpus_texts) or None,
                                   stats_audio=list(stats_audio) or None, seed=seed)

    @classmethod
    def validate_base_folder(cls, path: Path) -> dict[str, Path]:
        return layout.validate_base_dir(path)

    @classmethod
    def is_untrained(cls, path: Path) -> bool:
        return has_untrained_note(Path(path) / layout.CONFIG)

    @classmethod
    def usage(cls) -> list[str]:
        return ["It loads unchanged with coqui-tts: `Xtts.init_from_config(config)` then",
                "`model.load_checkpoint(config, checkpoint_dir=THIS_FOLDER)`; condition it on the clips in",
                "`reference/`."]

    def __init__(self, synthesis_max_audio_tokens: int | None = None):
        self.device = torch.device("cpu")
        self.model: Any = None
        self.config: Any = None
        self.base_dir: Path | None = None
        self.synthesis_max_audio_tokens = synthesis_max_audio_tokens
        self._files: dict[str, Path] = {}
        self._config_dict: dict[str, Any] = {}
        self._dvae: Any = None
        self._mel_stats: torch.Tensor | None = None
        self._extractor: Any = None
        self._train_mode = True
        self._mode_applied: bool | None = None  # the mode set_train last applied (None: apply it again)
        self._speed: Any = None  # speed.GptTrainingSpeed, set by configure_training
        # What trains (configure_model): an extended vocabulary (vocab.json text), LoRA adapters, length
        # limits.
        self._vocab_json: str | None = None
        self._lora: Any = None  # lora.LoraSettings
        self._limits: dict[str, float] = {}
        # Conditioning of the references, reused while the model stays in inference mode (the weights
        # cannot change there); cleared by set_train(True), load_trained and load_base.
        self._cond_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # ---------------------------------------------------------------- loading
    def load_base(self, path: Path, device: torch.device) -> None:
        """Validate the XTTS-v2 folder (naming any missing/unreadable file) and load it onto ``device``."""
        from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer
        from TTS.tts.models.xtts import Xtts

        path = Path(path)
        files = layout.validate_base_dir(path)
        self._config_dict = layout.read_config_dict(files[layout.CONFIG])
        config = layout.load_config(files[layout.CONFIG])
        try:
            tokenizer = VoiceBpeTokenizer(vocab_file=str(files[layout.VOCAB]))
        except Exception as e:  # tokenizers raises its own exception types for a bad vocab
            raise BaseModelError(f"{files[layout.VOCAB]}: cannot read the tokenizer ({e})") from e
        if tokenizer.tokenizer.token_to_id("[START]") is None:
            raise BaseModelError(
                f"{files[layout.VOCAB]}: the vocabulary has no [START] token; not an XTTS vocab"
            )
        # What Xtts.init_models derives from the tokenizer, set first so that the model is built only once.
        args = config.model_args
        args.gpt_number_text_tokens = tokenizer.get_number_tokens()
        args.gpt_start_text_token = tokenizer.tokenizer.token_to_id("[START]")
        args.gpt_stop_text_token = tokenizer.tokenizer.token_to_id("[STOP]")
        model = Xtts(config)
        model.tokenizer = tokenizer
        state = layout.load_model_state(files[layout.MODEL])
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise BaseModelError(
                f"{files[layout.MODEL]}: weights do not match config.json / vocab.json ({str(e)[:600]})"
            ) from e
        self._dvae = layout.load_dvae(files[layout.DVAE], config.model_args.gpt_num_audio_tokens - 2)
        self._mel_stats = layout.load_mel_stats(files[layout.MEL_STATS])
        if layout.SPEAKERS in files:  # not used here, but export copies it: check it loads without unpickling
            layout.load_speakers(files[layout.SPEAKERS])
        if not torch.allclose(self._mel_stats, model.mel_stats.float().cpu()):
            logger.warning("%s differs from the mel_stats inside %s; training features use mel_stats.pth "
                           "(as Coqui's GPTTrainer does)", files[layout.MEL_STATS], files[layout.MODEL])
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.gpt.parameters():
            p.requires_grad_(True)
        self.device = torch.device(device)
        self.model = model.to(self.device)  # the DVAE stays on the CPU until build_features needs it
        self.config, self.base_dir, self._files, self._extractor = config, path, files, None
        self._speed = None
        self._vocab_json, self._lora = None, None
        self._cond_cache.clear()
        self._mode_applied = None
        self.set_train(True)
        logger.info("loaded XTTS base %s (GPT: %d layers x %d, %.1f M parameters) on %s", path,
                    config.model_args.gpt_layers, config.model_args.gpt_n_model_channels,
                    sum(p.numel() for p in model.gpt.parameters()) / 1e6, self.device)

    def _require(self) -> Any:
        if self.model is None:
            raise RuntimeError("no base model loaded; call load_base(path, device) first")
        return self.model

    # ---------------------------------------------------------------- features
    def _feature_extractor(self) -> Any:
        from voicetune.backends.xtts.features import (
            MAX_TEXT_LENGTH,
            MAX_WAV_LENGTH,
            FeatureSettings,
            XttsFeatureExtractor,
        )

        if self._extractor is None:
            args, audio = self.config.model_args, self.config.audio
            hashes = {
                name: file_sha256(self._files[name]) for name in (layout.DVAE, layout.MEL_STATS, layout.VOCAB)
            }
            if self._vocab_json is not None:  # an extended vocabulary (configure_model) tokenizes differently
                hashes[layout.VOCAB] = hashlib.sha256(self._vocab_json.encode("utf-8")).hexdigest()
            settings = FeatureSettings(
                sample_rate=int(audio.sample_rate),
                dvae_sample_rate=int(audio.dvae_sample_rate),
                code_stride=int(args.gpt_code_stride_len),
                use_perceiver=bool(args.gpt_use_perceiver_resampler),
                # The GPT's position table holds gpt_max_audio_tokens + 3 codes: start, stop and 3 extra.
                max_wav_length=min(
                    MAX_WAV_LENGTH, (args.gpt_max_audio_tokens - 2) * args.gpt_code_stride_len
                ),
                max_text_length=min(MAX_TEXT_LENGTH, args.gpt_max_text_tokens),
                base_hashes=hashes,
            )
            if self._limits.get("max_audio_seconds"):
                settings.max_wav_length = min(settings.max_wav_length,
                                              int(self._limits["max_audio_seconds"] * settings.sample_rate))
            if self._limits.get("max_text_tokens"):
                settings.max_text_length = min(settings.max_text_length, int(self._limits["max_text_tokens"]))
            assert self._mel_stats is not None, "load_base reads mel_stats.pth"
            self._extractor = XttsFeatureExtractor(
                self.model.tokenizer, self._dvae, self._mel_stats, settings, self.device
            )
        return self._extractor

    def build_features(
        self, clips: Sequence[Clip], cache: Path, progress: Progress | None = None
    ) -> FeatureStore:
        """Tokens, DVAE codes and conditioning mels of ``clips``, cached under ``cache`` by content hash.

        The store's conditioning crops are seeded from ``torch.initial_seed()`` (the loop seeds torch
        with the run's seed first), so a rerun draws the same crops.
        """
        from voicetune.backends.xtts.features import build_feature_store

        self._require()
        with self._dvae_on_device():
            return build_feature_store(clips, Path(cache), self._feature_extractor(), progress,
                                       seed=torch.initial_seed() % (2**31))

    @contextlib.contextmanager
    def _dvae_on_device(self) -> Iterator[None]:
        """The DVAE only turns audio into codes: it is on the model's device while features are computed and
        on the CPU the rest of the time, so that training does not hold its 200 MB (XTTS-v2) on the GPU."""
        self._dvae.to(self.device)
        try:
            yield
        finally:
            self._dvae.to("cpu")

    def collate(self, items: list[dict[str, torch.Tensor]]) -> Batch:
        """Pad feature items into a batch for :meth:`loss`."""
        from voicetune.backends.xtts.features import collate

        batch = collate(items, int(self._require().config.model_args.gpt_stop_audio_token))
        return self._speed.pack(batch) if self._speed is not None else batch

    def graph_inputs(self, batch: Batch) -> dict[str, torch.Tensor] | None:
        """The tensors of a collated batch that the packed loss reads (CUDA graphs copy only these, and one
        graph serves every batch of the same packed shape); None for an unpacked batch."""
        from voicetune.backends.xtts.speed import PACKED_KEYS

        if "text_targets" not in batch:
            return None
        return {k: batch[k] for k in (*PACKED_KEYS, "cond_mels")}

    def configure_training(self, cfg: TrainConfig, cuda_graphs: bool = False) -> None:
        """Apply cfg's speed/memory options (attention, packed loss, compile, bf16 weights); before the
        optimizer.
        Under ``cuda_graphs`` the packed loss keeps per-parameter gradients (see speed.GptTrainingSpeed)."""
        from voicetune.backends.xtts.speed import configure_training

        self._speed = configure_training(self._require().gpt, cfg, self.device, cuda_graphs)
        self._mode_applied = None  # attention modules replaced, weights cast: switch modes afresh

    # ---------------------------------------------------------------- what trains
    # (backends/xtts/structure.py)
    def configure_model(self, cfg: TrainConfig, run_dir: Path | None = None,
                        texts: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        """Shape the model for training, before features and the optimizer: vocabulary, dropout, LoRA,
        freezing.

        The vocabulary: ``run_dir/vocab.json`` when the run already has one (a resumed run), else with
        ``cfg.extend_vocab`` it is extended for ``texts`` ((transcript, language) pairs) and written there.
        Returns a summary for run.json.
        """
        from voicetune.backends.adapters import has_lora
        from voicetune.backends.gpt_tts.lora import apply_lora
        from voicetune.backends.xtts import structure
        from voicetune.backends.xtts.vocab import extend_vocab

        gpt, opts = self._require().gpt, XttsOptions.of(cfg)
        summary: dict[str, Any] = {}
        vocab = structure.read_run_vocab(run_dir)
        if vocab is None and opts.extend_vocab:
            ext = extend_vocab(self.model.tokenizer, list(texts), opts.extend_vocab_size)
            summary["vocab"] = {
                "old_tokens": ext.old_size,
                "new_tokens": ext.new_size,
                "new_chars": ext.new_chars,
                "new_merges": len(ext.new_merges),
                "still_unknown": ext.still_unknown,
            }
            if ext.new_size > ext.old_size:
                vocab = ext.text
                if run_dir is not None:
                    atomic_write_text(Path(run_dir) / structure.RUN_VOCAB, vocab)
        if vocab is not None:
            self.apply_vocab(vocab)
        if opts.dropout >= 0:
            structure.set_dropout(gpt, opts.dropout)
        self._lora = structure.lora_settings(cfg)
        if self._lora is not None and not has_lora(gpt):
            apply_lora(gpt, self._lora)
        trainable, total = structure.set_trainable(gpt, cfg, self._vocab_json is not None)
        self._mode_applied = None  # LoRA adapters or a resized vocabulary: new modules
        logger.info(
            "training %.2f M of %.2f M GPT parameters (%s): %s",
            trainable / 1e6,
            total / 1e6,
            cfg.finetune,
            structure.summarize(gpt),
        )
        return {**summary, "finetune": cfg.finetune, "trainable_params": trainable, "gpt_params": total}

    def apply_vocab(self, vocab_json: str) -> None:
        """Switch to an extended vocabulary (vocab.json text) and grow text_embedding/text_head to fit it."""
        from tokenizers import Tokenizer
        from TTS.tts.layers.xtts.tokenizer import VoiceBpeTokenizer

        from voicetune.backends.xtts.vocab import check_extends, number_of_tokens, resize_text_tokens

        model = self._require()
        if vocab_json == self._vocab_json:
            return
        try:
            check_extends(model.tokenizer.tokenizer.to_str(), vocab_json)
            tok = VoiceBpeTokenizer()
            tok.tokenizer = Tokenizer.from_str(vocab_json)
        except Exception as e:  # check_extends' ValueError, and tokenizers' own exception types
            raise BaseModelError(f"the extended vocabulary does not fit the base {self.base_dir}: {e}") from e
        n = number_of_tokens(vocab_json)
        added = resize_text_tokens(model.gpt, n)
        model.tokenizer, model.args.gpt_number_text_tokens = tok, n
        self._config_dict.setdefault("model_args", {})["gpt_number_text_tokens"] = n
        self._vocab_json, self._extractor = vocab_json, None
        self._mode_applied = None
        logger.info("vocabulary extended to %d tokens (%d new text_embedding/text_head rows)", n, added)

    def set_length_limits(self, max_audio_seconds: float = 0.0, max_text_tokens: int = 0) -> None:
        """Training clips longer than these are dropped (0: the model's own limits); before build_features."""
        self._limits = {
            "max_audio_seconds": float(max_audio_seconds),
            "max_text_tokens": int(max_text_tokens),
        }
        self._extractor = None

    def batch_stats(self, batch: Batch) -> dict[str, float]:
        """Audio seconds and GPT tokens (conditioning latents + text + audio codes) of a collated batch."""
        args = self._require().config.model_args
        wav = batch["wav_lengths"].long()
        codes = (wav + args.gpt_code_stride_len - 1) // args.gpt_code_stride_len + 3
        cond = 32 if args.gpt_use_perceiver_resampler else 1
        tokens = int((batch["text_lengths"].long() + 2).sum() + (codes + 1).sum()) + cond * int(wav.numel())
        return {
            "audio_seconds": float(wav.sum()) / float(self.config.audio.sample_rate),
            "tokens": float(tokens),
        }

    # ---------------------------------------------------------------- training
    def trainable(self) -> torch.nn.Module:
        """The GPT (the HiFi-GAN decoder and the DVAE are frozen)."""
        return self._require().gpt

    def param_groups(self, cfg: TrainConfig) -> list[dict[str, Any]]:
        """Optimizer groups of the parameters that train: by learning-rate side (text, audio, conditioning,
        the rest; --lr-*-mult) x weight decay (on the weight matrices of Linear/Conv layers only: biases,
        norms, embeddings and the perceiver's latent queries are not decayed, as in Coqui's recipe)."""
        from voicetune.backends.xtts.structure import param_groups

        return param_groups(self.trainable(), cfg)

    def loss(self, batch: Batch, cfg: TrainConfig) -> dict[str, torch.Tensor]:
        """GPT text and audio-code cross-entropies (GPTTrainer.train_step), weighted by the config.

        ``cond_idxs`` is None: with the perceiver, GPT.forward's conditioning mask is replaced inside
        get_logits, and cond_idxs would only mask mel targets of the last batch row in the wrong units
        (and it modifies the batch tensor in place). ``cond_lens`` likewise only feeds that mask.
        """
        parts = self._speed.loss(batch) if self._speed is not None else None
        if parts is None:
            parts = self._require().gpt(
                batch["text_inputs"], batch["text_lengths"], batch["audio_codes"], batch["wav_lengths"],
                cond_mels=batch["cond_mels"], cond_idxs=None, cond_lens=batch["cond_lens"],
            )
        text_ce, mel_ce = parts[0], parts[1]
        opts = XttsOptions.of(cfg)
        total = opts.text_ce_weight * text_ce + opts.mel_ce_weight * mel_ce
        return {"loss": total, "text_ce": text_ce.detach(), "mel_ce": mel_ce.detach()}

    def set_train(self, mode: bool) -> None:
        """True: GPT in training mode, without the inference-only modules, and the HiFi-GAN decoder (with its
        speaker encoder) parked on the CPU: training never runs it, and on the GPU it would hold 0.1 GB
        (XTTS-v2) through every step. False: GPT ready to generate, decoder on the model's device.

        Switching walks every module and moves the decoder (~12 ms for XTTS-v2); asking for the mode the
        model is already in costs nothing (what changes the model's modules, e.g. LoRA or a new vocabulary,
        makes the next call switch again)."""
        gpt = self._require().gpt
        mode = bool(mode)
        if self._mode_applied is mode and gpt.training is mode:
            return
        self.model.hifigan_decoder.eval().to("cpu" if mode else self.device)
        if mode:
            self._cond_cache.clear()  # the GPT's conditioning encoder is about to change
            # init_gpt_for_inference adds aliases (gpt_inference, gpt.wte) that must not reach saved states.
            if hasattr(gpt, "gpt_inference"):
                del gpt.gpt_inference
            if "wte" in gpt.gpt._modules:
                del gpt.gpt.wte
            gpt.train()
        else:
            if not hasattr(gpt, "gpt_inference"):
                gpt.init_gpt_for_inference(kv_cache=bool(self.config.model_args.kv_cache))
            gpt.eval()
        self._train_mode = self._mode_applied = mode

    # ---------------------------------------------------------------- synthesis
    def _conditioning(self, refs: Sequence[Path]) -> tuple[torch.Tensor, torch.Tensor]:
        """GPT conditioning latents and the decoder's speaker embedding (Xtts.get_conditioning_latents)."""
        from voicetune.backends.xtts.features import load_wav_tensor

        stats = [Path(r).stat() for r in refs]
        key = tuple((str(r), s.st_size, s.st_mtime_ns) for r, s in zip(refs, stats, strict=True))
        if not self._train_mode and key in self._cond_cache:
            return self._cond_cache[key]  # same references, same weights: an evaluation's later sentences
        model, cfg, sr = self.model, self.config, 22050
        audios, embeddings = [], []
        for ref in refs:
            audio = load_wav_tensor(ref, sr)[:, : sr * int(cfg.max_ref_len)]
            if cfg.sound_norm_refs:
                audio = audio / audio.abs().max().clamp(min=1e-8) * 0.75
            embeddings.append(model.get_speaker_embedding(audio.to(self.device), sr))
            audios.append(audio)
        try:
            latents = model.get_gpt_cond_latents(
                torch.cat(audios, dim=-1),
                sr,
                length=int(cfg.gpt_cond_len),
                chunk_length=int(cfg.gpt_cond_chunk_len),
            )
        except RuntimeError as e:  # "Provided reference audio too short"
            raise ValueError(f"reference audio {[str(r) for r in refs]}: {e}") from e
        result = latents, torch.stack(embeddings).mean(dim=0)
        if not self._train_mode:
            self._cond_cache[key] = result
        return result

    def _max_audio_tokens(self) -> int:
        own = int(self.model.gpt.max_gen_mel_tokens)
        cap = self.synthesis_max_audio_tokens
        if cap is None:
            cap = layout.voicetune_settings(self._config_dict).get("synthesis_max_audio_tokens")
        return min(own, int(cap)) if cap else own

    def synthesize(self, text: str, refs: Sequence[Path], language: str, seed: int) -> Waveform:
        """Render ``text`` in the voice of ``refs`` (same seed, same audio); the global RNG is left untouched.

        ``meta``: ``hit_max_length`` (a piece reached the token cap without a stop token: usually babble),
        ``num_tokens`` (audio tokens generated), ``max_audio_tokens`` (the cap).
        """
        model, cfg = self._require(), self.config
        if not refs:
            raise ValueError("synthesize needs at least one reference clip (refs)")
        if not text.strip():
            raise ValueError("synthesize: the text is empty")
        supported = {lang.split("-")[0] for lang in cfg.languages}
        if language.split("-")[0] not in supported:
            raise ValueError(
                f"language {language!r} is not supported by this model; choose one of {cfg.languages}"
            )
        was_training = self._train_mode
        self.set_train(False)
        gpt = model.gpt
        own_cap, cap = gpt.max_gen_mel_tokens, self._max_audio_tokens()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        try:
            speed_ctx = (self._speed.inference_context(self.device, model.hifigan_decoder) if self._speed
                         else contextlib.nullcontext())
            with torch.random.fork_rng(devices=devices), torch.inference_mode(), speed_ctx:
                torch.manual_seed(seed)
                latents, speaker = self._conditioning(refs)
                gpt.max_gen_mel_tokens = cap
                wavs, counts = [], []
                for piece in self._split(text, language):
                    out = model.inference(
                        piece, language, latents, speaker, temperature=cfg.temperature,
                        length_penalty=cfg.length_penalty, repetition_penalty=cfg.repetition_penalty,
                        top_k=cfg.top_k, top_p=cfg.top_p, enable_text_splitting=False,
                    )
                    wavs.append(np.asarray(out["wav"], dtype=np.float32).reshape(-1))
                    counts.append(int(out["gpt_latents"].shape[1]))
        finally:
            gpt.max_gen_mel_tokens = own_cap
            if was_training:
                self.set_train(True)
        audio = np.clip(np.concatenate(wavs), -1.0, 1.0).astype(np.float32)
        meta = {
            "hit_max_length": any(c >= cap for c in counts),
            "num_tokens": sum(counts),
            "max_audio_tokens": cap,
        }
        return Waveform(audio, int(cfg.model_args.output_sample_rate), meta)

    def synthesize_batch(self, texts: Sequence[str], refs: Sequence[Path], language: str,
                         seeds: Sequence[int]) -> list[Waveform | Exception]:
        """Render several texts in one generation pass (per text piece; backends/xtts/batched.py), each as
        :meth:`synthesize` renders it with its own seed: a batch of one is bit-identical to it, a larger batch
        equal up to float rounding in the attention (see batched.py). A text that fails (empty, too long)
        gets its exception in its place."""
        from voicetune.backends.xtts import batched

        model, cfg = self._require(), self.config
        if len(seeds) != len(texts):
            raise ValueError(f"synthesize_batch: {len(texts)} texts but {len(seeds)} seeds")
        out: list[Waveform | Exception | None] = [None] * len(texts)
        problem = self._batch_problem(refs, language)
        pieces: dict[int, list[str]] = {}
        for i, text in enumerate(texts):
            try:
                if problem:
                    raise ValueError(problem)
                if not text.strip():
                    raise ValueError("synthesize: the text is empty")
                pieces[i] = self._split(text, language)
            except ValueError as e:
                out[i] = e
        if pieces:
            was_training = self._train_mode
            self.set_train(False)
            gpt = model.gpt
            own_cap, cap = gpt.max_gen_mel_tokens, self._max_audio_tokens()
            devices = [self.device.index or 0] if self.device.type == "cuda" else []
            try:
                speed_ctx = (self._speed.inference_context(self.device, model.hifigan_decoder) if self._speed
                             else contextlib.nullcontext())
                with torch.random.fork_rng(devices=devices), torch.inference_mode(), speed_ctx:
                    gpt.max_gen_mel_tokens = cap
                    try:
                        latents, speaker = self._conditioning(refs)
                    except ValueError as e:  # references too short: every text fails the same way
                        return [o if o is not None else e for o in out]
                    sampling = batched.Sampling(float(cfg.temperature), int(cfg.top_k), float(cfg.top_p),
                                                float(cfg.repetition_penalty))
                    results = self._render_pieces(pieces, [int(s) for s in seeds], language, latents, speaker,
                                                  sampling)
            finally:
                gpt.max_gen_mel_tokens = own_cap
                if was_training:
                    self.set_train(True)
            for i, (wavs, counts, error) in results.items():
                if error is not None:
                    out[i] = error
                    continue
                audio = np.clip(np.concatenate(wavs), -1.0, 1.0).astype(np.float32)
                meta = {"hit_max_length": any(c >= cap for c in counts), "num_tokens": sum(counts),
                        "max_audio_tokens": cap}
                out[i] = Waveform(audio, int(cfg.model_args.output_sample_rate), meta)
        return [o if o is not None else RuntimeError("not rendered") for o in out]

    def _batch_problem(self, refs: Sequence[Path], language: str) -> str:
        if not refs:
            return "synthesize needs at least one reference clip (refs)"
        supported = {lang.split("-")[0] for lang in self.config.languages}
        if language.split("-")[0] not in supported:
            return (f"language {language!r} is not supported by this model; choose one of "
                    f"{self.config.languages}")
        return ""

    def _render_pieces(self, pieces: dict[int, list[str]], seeds: list[int], language: str,
                       latents: torch.Tensor, speaker: torch.Tensor,
                       sampling: Any) -> dict[int, tuple[list[np.ndarray], list[int], Exception | None]]:
        """Generate the texts' pieces round by round (all first pieces in one batch, then all second ones...),
        each text's generator carrying on from its previous piece, as one synthesize call draws them."""
        from voicetune.backends.xtts import batched

        model = self.model
        generators = {i: torch.Generator(device=self.device).manual_seed(seeds[i]) for i in pieces}
        results: dict[int, tuple[list[np.ndarray], list[int], Exception | None]] = {
            i: ([], [], None) for i in pieces}
        for r in range(max(len(p) for p in pieces.values())):
            rows = [i for i in pieces if len(pieces[i]) > r and results[i][2] is None]
            if not rows:
                break
            try:
                tokens = [batched.text_tokens(model, pieces[i][r], language) for i in rows]
                more = [len(pieces[i]) > r + 1 for i in rows]  # texts with a piece after this one
                codes = batched.generate(model.gpt, latents, tokens, [generators[i] for i in rows], sampling,
                                         more)
                for i, t, c in zip(rows, tokens, codes, strict=True):
                    wav, frames = batched.decode(model, latents, speaker, t, c)
                    results[i][0].append(np.asarray(wav.numpy(), dtype=np.float32).reshape(-1))
                    results[i][1].append(frames)
            except (RuntimeError, ValueError) as e:  # e.g. out of memory: the texts of this round fail
                for i in rows:
                    results[i] = (results[i][0], results[i][1], e)
        return results

    def _split(self, text: str, language: str) -> list[str]:
        """Sentences packed up to the tokenizer's character limit (Xtts's split_sentence without spaCy)."""
        limit = self.model.tokenizer.char_limits.get(language.split("-")[0], 250)
        text = " ".join(text.split())
        if len(text) < limit:
            pieces = [text]
        else:
            pieces = [""]
            for sentence in re.split(r"(?<=[.!?;:])\s+", text):
                for part in textwrap.wrap(sentence, width=limit, break_on_hyphens=False) or [sentence]:
                    if pieces[-1] and len(pieces[-1]) + 1 + len(part) > limit:
                        pieces.append(part)
                    else:
                        pieces[-1] = f"{pieces[-1]} {part}".strip()
        max_tokens = int(self.config.model_args.gpt_max_text_tokens)
        for piece in pieces:
            n = len(self.model.tokenizer.encode(piece.lower(), language))
            if n >= max_tokens:
                raise ValueError(
                    f"text piece of {n} tokens exceeds the model's {max_tokens}-token limit: {piece[:60]!r}"
                )
        return pieces

    # ---------------------------------------------------------------- state
    def save(self, path: Path) -> None:
        """Write the trainable state atomically: the GPT state dict (inference-only aliases excluded), or only
        the tensors that train (LoRA adapters, unfrozen parts) with the structure they need (structure.py)."""
        from voicetune.backends.xtts.structure import trainable_state

        atomic_torch_save(trainable_state(self._require().gpt, self._vocab_json, self._lora), Path(path))

    def _adopt_structure(self, meta: dict[str, Any], path: Path) -> None:
        """Rebuild what a checkpoint's structure needs on the loaded base: its vocabulary, its LoRA
        adapters."""
        from voicetune.backends.adapters import LoraSettings, has_lora
        from voicetune.backends.gpt_tts.lora import apply_lora

        if meta.get("vocab") and meta["vocab"] != self._vocab_json:
            self.apply_vocab(meta["vocab"])
        if meta.get("lora"):
            settings = LoraSettings.from_dict(meta["lora"])
            if not has_lora(self.model.gpt):
                apply_lora(self.model.gpt, settings)
            elif self._lora is not None and settings != self._lora:
                raise BaseModelError(
                    f"{path}: LoRA {settings} differs from the adapters of this model {self._lora}"
                )
            self._lora = settings

    def load_trained(self, path: Path) -> None:
        """Load a GPT state written by :meth:`save` (or the gpt.* part of an XTTS model.pth)."""
        gpt = self._require().gpt
        self._cond_cache.clear()
        try:
            state = torch.load(Path(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # objects other than tensors and plain values: never unpickled
            why = str(e).strip().splitlines()[-1][:200]
            raise BaseModelError(f"{path}: not a voicetune weights file (it holds Python objects, which "
                                 f"voicetune does not load: {why})") from None
        except (OSError, RuntimeError, EOFError, ValueError) as e:
            raise BaseModelError(f"{path}: cannot load the trained XTTS GPT state ({e})") from e
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            full = layout.normalize_model_state(state["model"])
            state = {k[len("gpt."):]: v for k, v in full.items() if k.startswith("gpt.")}
        from voicetune.backends.xtts.structure import split_meta

        state, meta = split_meta(state)
        self._adopt_structure(meta, Path(path))
        self._mode_applied = None
        state = {k: v for k, v in state.items() if not k.startswith(_INFERENCE_KEYS)}
        try:
            missing, unexpected = gpt.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatch: trained on another base model
            raise BaseModelError(
                f"{path}: does not fit the loaded base model {self.base_dir} ({str(e)[:400]})"
            ) from e
        missing = [] if meta.get("partial") else [k for k in missing if not k.startswith(_INFERENCE_KEYS)]
        if missing or unexpected:
            raise BaseModelError(
                f"{path}: not a GPT state of this base model (missing {missing[:5]}, unexpected "
                f"{unexpected[:5]})"
            )

    def export(self, out: Path) -> None:
        """Write the native XTTS-v2 layout with the finetuned GPT; coqui-tts loads it unchanged.

        ``Xtts.init_from_config(cfg); model.load_checkpoint(cfg, checkpoint_dir=out, strict=True)``.
        """
        self._require()
        out = Path(out)
        if self.base_dir is not None and out.resolve() == self.base_dir.resolve():
            raise ValueError(f"{out}: refusing to export onto the base model folder; choose another folder")
        out.mkdir(parents=True, exist_ok=True)
        from voicetune.backends.adapters import merged_state_dict

        # LoRA adapters are folded into the GPT weights: model.pth has exactly the keys coqui-tts expects.
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items() if not k.startswith("gpt.")}
        state.update({k: v.cpu() for k, v in merged_state_dict(self.model.gpt, prefix="gpt.").items()
                      if not k.startswith(tuple("gpt." + p for p in _INFERENCE_KEYS))})
        atomic_write_text(out / layout.CONFIG, json.dumps(self._config_dict, indent=2) + "\n")
        atomic_torch_save({"model": state}, out / layout.MODEL)
        if self._vocab_json is not None:  # the extended vocabulary the GPT's text embedding was grown for
            atomic_write_text(out / layout.VOCAB, self._vocab_json)
        for name in (layout.VOCAB, layout.DVAE, layout.MEL_STATS, layout.SPEAKERS):
            if name == layout.VOCAB and self._vocab_json is not None:
                continue
            if name in self._files:
                with atomic_path(out / name) as tmp:
                    shutil.copyfile(self._files[name], tmp)
            else:
                atomic_torch_save({}, out / name)
        logger.debug("exported the XTTS-v2 model to %s", out)
