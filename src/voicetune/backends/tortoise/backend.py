"""Tortoise (coqui-tts) backend: finetune Tortoise's autoregressive model the way ai-voice-cloning users do,
synthesize with the full Tortoise chain, export the tortoise-v2 layout.

What is trained: the autoregressive model (coqui-tts's ``UnifiedVoice``: conditioning encoder, text and
audio-code embeddings and heads, the GPT-2 layers), as DL-Art-School trains it. coqui-tts's ``Tortoise`` model
class refuses to train (``train_step`` raises), but ``UnifiedVoice.forward`` returns the text and mel losses:
voicetune's loop drives it (or the shared packed form of it, ``backends/gpt_tts/``) on features cached once
(``features.py``). The DVAE, the diffusion decoder, CLVP and the vocoder stay frozen; training parks the last
three on the CPU, and synthesis (``synthesis.py``) brings them back.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from voicetune.backends.base import Backend, BaseModelError, Batch, FeatureStore, Progress, Waveform
from voicetune.backends.gpt_tts.files import has_untrained_note
from voicetune.backends.tortoise import layout
from voicetune.backends.tortoise.options import TortoiseOptions
from voicetune.backends.tortoise.synthesis import EVALUATION, PRESETS
from voicetune.config import TrainConfig
from voicetune.data.manifest import Clip
from voicetune.utils.io import atomic_path, atomic_torch_save, file_sha256

logger = logging.getLogger(__name__)

_FROZEN_FOR_TRAINING = ("diffusion", "clvp", "vocoder")  # synthesis only: on the CPU while training


class TortoiseBackend(Backend):
    """The :class:`~voicetune.backends.base.Backend` for Tortoise (tortoise-v2 layout, coqui-tts models).

    ``synthesis_max_audio_tokens`` caps generation (one code = 1024 samples at 22.05 kHz, ~46 ms); by default
    the cap of config.json's ``voicetune.synthesis_max_audio_tokens`` (the tiny model sets it) or Tortoise's
    own 500. Synthesis renders with the ``evaluation`` preset until :meth:`use_synthesis_preset`.
    """

    name = "tortoise"
    options = TortoiseOptions
    base_layout = ("tortoise-v2 folder: autoregressive.pth, mel_norms.pth, dvae.pth (DL-Art-School's), "
                   "diffusion_decoder.pth, clvp2.pth, vocoder.pth")
    loss_parts: ClassVar[dict[str, str]] = {"text_ce": "text", "mel_ce": "mel"}
    supports_cuda_graphs = True  # the packed loss (speed.py): graph_inputs gives its tensors
    synthesis_presets = tuple(PRESETS)

    # ---------------------------------------------------------------- class level
    @classmethod
    def make_tiny_base(cls, out: Path, *, corpus_texts: Sequence[str] = (), stats_audio: Sequence[Path] = (),
                       seed: int = 0) -> Path:
        """A tiny random tortoise-v2 folder (backends/tortoise/tiny.py); its mel_norms.pth comes from
        ``stats_audio``. ``corpus_texts`` is not needed: Tortoise's tokenizer is fixed (coqui-tts ships
        it)."""
        from voicetune.backends.tortoise.tiny import make_tiny_tortoise_base

        return make_tiny_tortoise_base(Path(out), stats_audio=list(stats_audio) or None, seed=seed)

    @classmethod
    def validate_base_folder(cls, path: Path) -> dict[str, Path]:
        return layout.validate_base_dir(path)

    @classmethod
    def is_untrained(cls, path: Path) -> bool:
        return has_untrained_note(Path(path) / layout.CONFIG)

    @classmethod
    def usage(cls) -> list[str]:
        return ["It loads unchanged with coqui-tts: `config = TortoiseConfig()` (plus `config.load_json(",
                "\"config.json\")` when the folder has one), `model = Tortoise.init_from_config(config)`,",
                "`model.load_checkpoint(config, checkpoint_dir=THIS_FOLDER, eval=True)`; tortoise-tts reads",
                "its autoregressive.pth too. Condition it on the clips in `reference/`."]

    def __init__(self, synthesis_max_audio_tokens: int | None = None):
        self.device = torch.device("cpu")
        self.model: Any = None  # coqui-tts Tortoise: autoregressive, diffusion, clvp, vocoder, tokenizer
        self.config: Any = None
        self.base_dir: Path | None = None
        self.synthesis_max_audio_tokens = synthesis_max_audio_tokens
        self.preset = EVALUATION
        self._files: dict[str, Path] = {}
        self._config_dict: dict[str, Any] = {}
        self._dvae: Any = None
        self._mel_norms: torch.Tensor | None = None
        self._extractor: Any = None
        self._opts = TortoiseOptions()
        self._limits: dict[str, float] = {}
        self._lora: Any = None
        self._speed: Any = None  # speed.GptTrainingSpeed, set by configure_training
        self._train_mode = True
        self._warned: set[str] = set()  # languages warned about once
        # conditioning latents of the references, reused while the model stays in inference mode
        self._cond_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    # ---------------------------------------------------------------- loading
    def load_base(self, path: Path, device: torch.device) -> None:
        """Validate the tortoise-v2 folder (naming any missing/unreadable file and where users get it) and
        load it: every file with weights_only, the autoregressive model onto ``device``."""
        from TTS.tts.models.tortoise import Tortoise

        from voicetune.backends.gpt_tts.files import load_dvae, load_mel_norms, torch_load

        path = Path(path)
        files = layout.validate_base_dir(path)
        config, config_dict = layout.load_config(files)
        ar_state = layout.autoregressive_state(
            torch_load(files[layout.AUTOREGRESSIVE], "the autoregressive model"), files[layout.AUTOREGRESSIVE]
        )
        mel_norms = load_mel_norms(files[layout.MEL_NORMS])
        model = Tortoise(config)
        self._load_autoregressive(model.autoregressive, ar_state, files[layout.AUTOREGRESSIVE])
        for name, key, what in (("diffusion", layout.DIFFUSION, "the diffusion decoder"),
                                ("clvp", layout.CLVP, "the CLVP model")):
            layout.load_into(getattr(model, name), layout.load_state(files[key], what), files[key], what)
        layout.load_into(
            model.vocoder,
            layout.load_vocoder_state(files[layout.VOCODER]),
            files[layout.VOCODER],
            "the vocoder",
        )
        self._dvae = load_dvae(files[layout.DVAE], model.autoregressive.number_mel_codes - 2,
                               expected_what="autoregressive.pth reads", gpt_file="autoregressive.pth")
        # conditioning mels: this file, never coqui's URL default
        model.mel_norm_path = files[layout.MEL_NORMS]
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.autoregressive.parameters():
            p.requires_grad_(True)
        self.device = torch.device(device)
        model.autoregressive_batch_size = 16 if self.device.type == "cuda" else 4
        self.model = model.eval()
        self.model.autoregressive.to(self.device)  # the rest follows in set_train(False), for synthesis
        self.config, self._config_dict, self.base_dir, self._files = config, config_dict, path, files
        self._mel_norms, self._extractor, self._speed, self._lora = mel_norms, None, None, None
        self._opts = TortoiseOptions()
        self._cond_cache.clear()
        self._train_mode = False
        self.set_train(True)
        ar = model.autoregressive
        logger.info("loaded Tortoise base %s (autoregressive: %d layers x %d, %.1f M parameters) on %s", path,
                    ar.layers, ar.model_dim, sum(p.numel() for p in ar.parameters()) / 1e6, self.device)

    @staticmethod
    def _load_autoregressive(module: Any, state: dict[str, Any], source: Path) -> None:
        """Strict on what the model needs; keys it does not have (another transformers' buffers were dropped
        already) are named in a warning, as coqui-tts loads autoregressive.pth with strict=False."""
        try:
            missing, unexpected = module.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shapes: another architecture
            raise BaseModelError(f"{source}: the autoregressive model does not match config.json / the "
                                 f"tortoise-v2 architecture ({str(e)[:600]})") from e
        if missing:
            raise BaseModelError(f"{source}: the autoregressive model lacks {len(missing)} tensors "
                                 f"({missing[:5]}); not a complete UnifiedVoice state dict")
        if unexpected:
            logger.warning("%s: ignoring %d tensors the autoregressive model does not have: %s", source,
                           len(unexpected), unexpected[:5])

    def _require(self) -> Any:
        if self.model is None:
            raise RuntimeError("no base model loaded; call load_base(path, device) first")
        return self.model

    @property
    def gpt(self) -> Any:
        """The autoregressive model (coqui-tts ``UnifiedVoice``)."""
        return self._require().autoregressive

    # ---------------------------------------------------------------- features
    def _feature_extractor(self) -> Any:
        from voicetune.backends.tortoise.features import (
            MAX_TEXT_LENGTH,
            MAX_WAV_LENGTH,
            SAMPLE_RATE,
            FeatureSettings,
            TortoiseFeatureExtractor,
        )

        if self._extractor is None:
            gpt = self.gpt
            settings = FeatureSettings(
                # the mel position table holds max_mel_tokens + 2 + conditioning inputs; codes = samples //
                # 1024
                max_wav_length=min(MAX_WAV_LENGTH, int(gpt.max_mel_tokens) * int(gpt.mel_length_compression)),
                max_text_length=min(MAX_TEXT_LENGTH, int(gpt.max_text_tokens)),
                code_stride=int(gpt.mel_length_compression),
                cond_clips=self._opts.conditioning_clips,
                cond_length=self._opts.conditioning_length,
                base_hashes={
                    name: file_sha256(self._files[name]) for name in (layout.DVAE, layout.MEL_NORMS)
                },
            )
            if self._limits.get("max_audio_seconds"):
                settings.max_wav_length = min(settings.max_wav_length,
                                              int(self._limits["max_audio_seconds"] * SAMPLE_RATE))
            if self._limits.get("max_text_tokens"):
                settings.max_text_length = min(settings.max_text_length, int(self._limits["max_text_tokens"]))
            assert self._mel_norms is not None, "load_base reads mel_norms.pth"
            self._extractor = TortoiseFeatureExtractor(
                self.model.tokenizer, self._dvae, self._mel_norms, settings, self.device
            )
        return self._extractor

    def build_features(
        self, clips: Sequence[Clip], cache: Path, progress: Progress | None = None
    ) -> FeatureStore:
        """Tokens, normalised mels and DVAE codes of ``clips``, cached under ``cache`` by content hash; the
        conditioning crops are drawn from them per item, seeded from ``torch.initial_seed()``."""
        from voicetune.backends.tortoise.features import build_feature_store

        self._require()
        with self._dvae_on_device():
            return build_feature_store(clips, Path(cache), self._feature_extractor(), progress,
                                       seed=torch.initial_seed() % (2**31))

    @contextlib.contextmanager
    def _dvae_on_device(self) -> Iterator[None]:
        """The DVAE only turns audio into codes: on the model's device while features are computed, else on
        the CPU (training never runs it)."""
        self._dvae.to(self.device)
        try:
            yield
        finally:
            self._dvae.to("cpu")

    def collate(self, items: list[dict[str, torch.Tensor]]) -> Batch:
        """Pad feature items into a batch for :meth:`loss` (packed at once when the packed loss is on)."""
        from voicetune.backends.tortoise.features import collate

        batch = collate(items, int(self.gpt.stop_mel_token))
        return self._speed.pack(batch) if self._speed is not None else batch

    def graph_inputs(self, batch: Batch) -> dict[str, torch.Tensor] | None:
        """The tensors of a packed batch that the loss reads (None for an unpacked batch)."""
        from voicetune.backends.tortoise.speed import PACKED_KEYS

        if "text_targets" not in batch:
            return None
        return {k: batch[k] for k in (*PACKED_KEYS, "cond_mels")}

    def set_length_limits(self, max_audio_seconds: float = 0.0, max_text_tokens: int = 0) -> None:
        """Training clips longer than these are dropped (0: 11.6 s and 200 tokens, DL-Art-School's limits)."""
        self._limits = {
            "max_audio_seconds": float(max_audio_seconds),
            "max_text_tokens": int(max_text_tokens),
        }
        self._extractor = None

    def batch_stats(self, batch: Batch) -> dict[str, float]:
        """Audio seconds and GPT positions (conditioning + text + audio codes, as the loss counts them)."""
        wav = batch["wav_lengths"].long()
        stride = int(self.gpt.mel_length_compression)
        tokens = int((1 + batch["text_lengths"].long() + 2 + wav // stride + 2).sum())
        return {"audio_seconds": float(wav.sum()) / 22050.0, "tokens": float(tokens)}

    # ---------------------------------------------------------------- what trains
    def configure_model(self, cfg: TrainConfig, run_dir: Path | None = None,
                        texts: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        """Dropout, LoRA and frozen parts of the autoregressive model, and the conditioning of the features,
        from ``cfg``; before features and the optimizer. Returns a summary for run.json."""
        from voicetune.backends.adapters import has_lora
        from voicetune.backends.gpt_tts import structure
        from voicetune.backends.gpt_tts.lora import apply_lora
        from voicetune.backends.tortoise.parts import PARTS, split_names

        gpt, opts = self.gpt, TortoiseOptions.of(cfg)
        self._opts, self._extractor = opts, None
        if opts.dropout >= 0:
            structure.set_dropout(gpt, opts.dropout)
        self._lora = structure.lora_settings(cfg, opts.lora_targets)
        if self._lora is not None and not has_lora(gpt):
            apply_lora(gpt, self._lora)
        trainable, total = structure.set_trainable(gpt, cfg.finetune, set(split_names(opts.freeze)), PARTS)
        logger.info(
            "training %.2f M of %.2f M autoregressive parameters (%s): %s",
            trainable / 1e6,
            total / 1e6,
            cfg.finetune,
            structure.summarize(gpt, PARTS),
        )
        return {"finetune": cfg.finetune, "trainable_params": trainable, "gpt_params": total}

    def configure_training(self, cfg: TrainConfig, cuda_graphs: bool = False) -> None:
        """Apply cfg's speed/memory options (packed loss, attention, compile, bf16 weights) before the
        optimizer."""
        from voicetune.backends.tortoise.speed import configure_training

        self._speed = configure_training(self.gpt, cfg, self.device, cuda_graphs)

    # ---------------------------------------------------------------- training
    def trainable(self) -> torch.nn.Module:
        """The autoregressive model (the DVAE, diffusion decoder, CLVP and vocoder are frozen)."""
        return self.gpt

    def param_groups(self, cfg: TrainConfig) -> list[dict[str, Any]]:
        """Groups by learning-rate side (text x --text-lr-weight, mel x --mel-lr-weight, the rest x 1) x
        weight decay (on the weight matrices of Linear/Conv layers only)."""
        from voicetune.backends.gpt_tts.structure import param_groups
        from voicetune.backends.tortoise.parts import PARTS, SIDES

        opts = TortoiseOptions.of(cfg)
        return param_groups(
            self.gpt, cfg, PARTS, SIDES, {"text": opts.text_lr_weight, "mel": opts.mel_lr_weight}
        )

    def loss(self, batch: Batch, cfg: TrainConfig) -> dict[str, torch.Tensor]:
        """Text and audio-code cross-entropies of ``UnifiedVoice.forward`` (conditioning latent from
        ``get_conditioning`` of the batch's conditioning mels), weighted by --text-ce-weight /
        --mel-ce-weight."""
        parts = self._speed.loss(batch) if self._speed is not None else None
        if parts is None:
            gpt = self.gpt
            latent = gpt.get_conditioning(batch["cond_mels"])
            # forward writes the stop code into its (sliced) audio-code input: give it a copy
            parts = gpt(latent, batch["text_inputs"], batch["text_lengths"], batch["audio_codes"].clone(),
                        batch["wav_lengths"])
        text_ce, mel_ce = parts[0], parts[1]
        opts = TortoiseOptions.of(cfg)
        total = opts.text_ce_weight * text_ce + opts.mel_ce_weight * mel_ce
        return {"loss": total, "text_ce": text_ce.detach(), "mel_ce": mel_ce.detach()}

    def set_train(self, mode: bool) -> None:
        """True: the autoregressive model in training mode without its inference-only aliases, and the
        diffusion decoder, CLVP and vocoder parked on the CPU (training never runs them). False: everything on
        the model's device, ready to synthesize."""
        model, gpt = self._require(), self.gpt
        if mode:
            if not self._train_mode:
                self._cond_cache.clear()  # the conditioning encoder is about to change
                # post_init_gpt2_config adds aliases (inference_model, gpt.wte) that must not reach saved
                # states
                if "inference_model" in gpt._modules:
                    del gpt.inference_model
                if "wte" in gpt.gpt._modules:
                    del gpt.gpt.wte
                for name in _FROZEN_FOR_TRAINING:
                    getattr(model, name).to("cpu")
            gpt.train()
        else:
            if "inference_model" not in gpt._modules:
                gpt.post_init_gpt2_config(kv_cache=bool(self.config.model_args.kv_cache))
            for name in _FROZEN_FOR_TRAINING:
                getattr(model, name).to(self.device).eval()
            gpt.eval()
        self._train_mode = bool(mode)

    # ---------------------------------------------------------------- synthesis
    def use_synthesis_preset(self, name: str) -> None:
        if name not in PRESETS:
            raise ValueError(f"unknown Tortoise synthesis preset {name!r}; choose one of {list(PRESETS)}")
        self.preset = name

    def _conditioning(self, refs: Sequence[Path], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(autoregressive, diffusion) conditioning latents of the reference clips, drawn after the seeding
        (Tortoise crops a random 6 s of longer clips)."""
        from voicetune.backends.tortoise.synthesis import reference_audio

        stats = [Path(r).stat() for r in refs]
        key = (seed, *((str(r), s.st_size, s.st_mtime_ns) for r, s in zip(refs, stats, strict=True)))
        if not self._train_mode and key in self._cond_cache:
            return self._cond_cache[key]
        latents = self.model.get_conditioning_latents(reference_audio(refs))
        if not self._train_mode:
            self._cond_cache[key] = latents
        return latents

    def _max_audio_tokens(self) -> int:
        own = min(500, int(self.gpt.max_mel_tokens))  # Tortoise.inference's default cap
        cap = self.synthesis_max_audio_tokens
        if cap is None:
            cap = layout.voicetune_settings(self._config_dict).get("synthesis_max_audio_tokens")
        return min(own, int(cap)) if cap else own

    def synthesize(self, text: str, refs: Sequence[Path], language: str, seed: int) -> Waveform:
        """Render ``text`` in the voice of ``refs`` through coqui-tts's Tortoise chain with the current preset
        (same seed, same audio; the global RNGs are left untouched). ``meta``: ``hit_max_length`` (a piece ran
        to the code cap: usually babble), ``num_tokens`` (codes rendered), ``max_audio_tokens``,
        ``preset``."""
        from voicetune.backends.tortoise.synthesis import OUTPUT_RATE, render, seeded, split_text

        model = self._require()
        if not refs:
            raise ValueError("synthesize needs at least one reference clip (refs)")
        if not text.strip():
            raise ValueError("synthesize: the text is empty")
        if language.split("-")[0] != "en" and language not in self._warned:
            self._warned.add(language)
            logger.warning("Tortoise's tokenizer reads English: %s text is transliterated to ASCII", language)
        pieces = split_text(text, model.tokenizer)
        was_training = self._train_mode
        self.set_train(False)
        cap, half = self._max_audio_tokens(), self.device.type == "cuda"
        speed_ctx = (
            self._speed.inference_context(self.device, [model.diffusion, model.vocoder])
            if self._speed
            else contextlib.nullcontext()
        )
        try:
            with torch.inference_mode(), speed_ctx, seeded(seed, self.device):
                latents = self._conditioning(refs, seed)
                rendered = [render(model, piece, latents, self.preset, seed, cap, half) for piece in pieces]
        finally:
            if was_training:
                self.set_train(True)
        audio = torch.cat([wav for wav, _ in rendered]).clamp(-1.0, 1.0).cpu().numpy().astype(np.float32)
        counts = [n for _, n in rendered]
        meta = {"hit_max_length": any(n >= cap for n in counts), "num_tokens": sum(counts),
                "max_audio_tokens": cap, "preset": self.preset}
        return Waveform(audio, OUTPUT_RATE, meta)

    # ---------------------------------------------------------------- state and export
    def save(self, path: Path) -> None:
        """Write the trainable state atomically: the autoregressive state dict, or (LoRA, frozen parts) only
        the tensors that train, with the structure they need."""
        from voicetune.backends.gpt_tts.structure import trainable_state

        atomic_torch_save(
            trainable_state(self.gpt, layout.INFERENCE_ONLY_PREFIXES, None, self._lora), Path(path)
        )

    def load_trained(self, path: Path) -> None:
        """Load a state written by :meth:`save`, or an autoregressive.pth (a finetune's) of this
        architecture."""
        from voicetune.backends.adapters import LoraSettings, has_lora
        from voicetune.backends.gpt_tts.lora import apply_lora
        from voicetune.backends.gpt_tts.structure import split_meta

        gpt = self.gpt
        self._cond_cache.clear()
        try:
            loaded = torch.load(Path(path), map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError) as e:
            raise BaseModelError(
                f"{path}: cannot load the trained Tortoise autoregressive state ({e})"
            ) from e
        loaded, meta = split_meta(loaded)
        if meta.get("lora"):
            settings = LoraSettings.from_dict(meta["lora"])
            if not has_lora(gpt):
                apply_lora(gpt, settings)
            elif self._lora is not None and settings != self._lora:
                raise BaseModelError(
                    f"{path}: LoRA {settings} differs from the adapters of this model {self._lora}"
                )
            self._lora = settings
        state = layout.autoregressive_state(loaded, path) if not meta.get("partial") else loaded
        try:
            missing, unexpected = gpt.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise BaseModelError(
                f"{path}: does not fit the loaded base model {self.base_dir} ({str(e)[:400]})"
            ) from e
        missing = (
            []
            if meta.get("partial")
            else [k for k in missing if not k.startswith(layout.INFERENCE_ONLY_PREFIXES)]
        )
        if missing or unexpected:
            raise BaseModelError(
                f"{path}: not an autoregressive state of this base model (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]})"
            )

    def export(self, out: Path) -> None:
        """Write the tortoise-v2 layout with the finetuned autoregressive.pth (a plain UnifiedVoice state
        dict, LoRA folded in, as coqui-tts's ``Tortoise.load_checkpoint`` and tortoise-tts load it); the other
        files are copied from the base (config.json when it has one)."""
        from voicetune.backends.adapters import merged_state_dict

        self._require()
        out = Path(out)
        if self.base_dir is not None and out.resolve() == self.base_dir.resolve():
            raise ValueError(f"{out}: refusing to export onto the base model folder; choose another folder")
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.cpu() for k, v in merged_state_dict(self.gpt).items()
                 if not k.startswith(layout.INFERENCE_ONLY_PREFIXES)}
        atomic_torch_save(state, out / layout.AUTOREGRESSIVE)
        for name, src in self._files.items():
            if name != layout.AUTOREGRESSIVE:
                with atomic_path(out / name) as tmp:
                    shutil.copyfile(src, tmp)
        logger.info("exported the Tortoise model to %s", out)
