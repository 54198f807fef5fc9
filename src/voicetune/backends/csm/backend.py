"""Sesame CSM-1B backend: finetune ``CsmForConditionalGeneration`` (LoRA or full) on cached Mimi codes,
synthesize with voice prompting, export a folder that transformers loads unchanged.

What trains: the backbone and the depth decoder (their LoRA adapters, or their weights); the Mimi codec never
does, and stays on the CPU while training (it only encodes the clips once, and decodes renders). Built on
transformers' ``CsmForConditionalGeneration``, ``CsmProcessor`` and ``MimiModel`` and on peft.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from voicetune.backends.base import Backend, BaseModelError, Batch, FeatureStore, Progress, Waveform
from voicetune.backends.csm import layout
from voicetune.backends.csm.options import LOSS_NOTE, CsmOptions
from voicetune.config import TrainConfig
from voicetune.data.manifest import Clip
from voicetune.utils.io import atomic_torch_save

logger = logging.getLogger(__name__)


class CsmBackend(Backend):
    """The :class:`~voicetune.backends.base.Backend` for Sesame CSM (``--backend csm``)."""

    name = "csm"
    options = CsmOptions
    base_layout = ("Hugging Face folder of sesame/csm-1b (config.json, model.safetensors, tokenizer.json, "
                   "tokenizer_config.json, preprocessor_config.json, chat template) or its hub id")
    loss_parts: ClassVar[dict[str, str]] = {"backbone_ce": "c0", "depth_ce": "c1+"}
    loss_note = LOSS_NOTE
    supports_cuda_graphs = True  # the loss reads only fixed-shape tensors of the batch (graph_inputs)
    synthesis_batch_size = 4  # texts of one evaluation rendered in one generate call (one seed)

    # ---------------------------------------------------------------- class level
    @classmethod
    def make_tiny_base(cls, out: Path, *, corpus_texts: Sequence[str] = (), stats_audio: Sequence[Path] = (),
                       seed: int = 0) -> Path:
        """An untrained tiny CSM (backends/csm/tiny.py): tokenizer trained on ``corpus_texts``, Mimi codebooks
        fitted to ``stats_audio``."""
        from voicetune.backends.csm.tiny import make_tiny_csm_base

        return make_tiny_csm_base(Path(out), list(corpus_texts) or None, list(stats_audio) or None, seed)

    @classmethod
    def validate_base_folder(cls, path: Path) -> dict[str, Path]:
        return layout.validate_base_dir(layout.resolve(path, download=False))

    @classmethod
    def is_untrained(cls, path: Path) -> bool:
        try:
            return bool(layout.read_sidecar(layout.resolve(path, download=False)).get("untrained"))
        except BaseModelError:
            return False

    @classmethod
    def usage(cls) -> list[str]:
        return [
            (
                "It loads unchanged with transformers: "
                "`CsmForConditionalGeneration.from_pretrained(THIS_FOLDER)`"
            ),
            "and `AutoProcessor.from_pretrained(THIS_FOLDER)`; prompt it with the clips in `reference/` as",
            "context turns of its speaker (see voicetune_csm.json for the speaker id and their transcripts).",
            "A LoRA run also wrote `adapter/`: `PeftModel.from_pretrained(base_model, THIS_FOLDER/adapter)`.",
        ]

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.model: Any = None
        self.processor: Any = None
        self.base_dir: Path | None = None
        self.base_ref = ""
        self.sidecar: dict[str, Any] = {}
        self.opts = CsmOptions()
        self.speaker_id = 0
        self.context_texts: dict[str, str] = {}  # content hash of a clip -> its transcript
        self._view: Any = None
        self._lora: Any = None
        self._limits: dict[str, float] = {}
        self._loss: Any = None
        self._speed: Any = None
        self._train_mode: bool | None = None
        self._dtype = torch.float32  # of the base's weights on disk (exports keep it)
        self._placed = False  # the model (codec aside) is on self.device
        # a frozen text embedding stays on the CPU while training (collate looks up)
        self._text_on_cpu = False

    # ---------------------------------------------------------------- loading
    def load_base(self, path: Path, device: torch.device) -> None:
        """Validate the base folder (downloading a hub id first) and load model and processor onto
        ``device``."""
        from transformers import AutoProcessor, CsmForConditionalGeneration

        from voicetune.backends.csm.export import explain_untied

        local = layout.resolve(path)
        files = layout.validate_base_dir(local)
        sidecar = layout.read_sidecar(local)
        try:
            model = CsmForConditionalGeneration.from_pretrained(
                local, dtype=torch.float32, attn_implementation="sdpa"
            )
            processor = AutoProcessor.from_pretrained(local)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
            raise BaseModelError(f"{local}: cannot load the CSM model or processor ({type(e).__name__}: "
                                 f"{str(e)[:500]})") from e
        if not hasattr(processor, "tokenizer") or not hasattr(processor, "feature_extractor"):
            raise BaseModelError(f"{local}: the processor is {type(processor).__name__}, not a CsmProcessor")
        rate, codec_rate = processor.feature_extractor.sampling_rate, model.config.codec_config.sampling_rate
        if rate != codec_rate:
            raise BaseModelError(
                f"{files['preprocessor']}: sampling rate {rate} differs from the codec's {codec_rate}"
            )
        explain_untied(model, local)
        self.adopt(model, processor, device, base_ref=str(path), base_dir=local, sidecar=sidecar)

    def adopt(self, model: Any, processor: Any, device: torch.device, base_ref: str = "",
              base_dir: Path | None = None, sidecar: dict[str, Any] | None = None) -> None:
        """Take a loaded ``CsmForConditionalGeneration`` and its processor as the base (load_base's second
        half; benchmarks hand in randomly initialised full-size models). The weights stay where they are (the
        CPU) until they are needed on ``device``: training first casts what does not train to bf16, so that a
        GPU never holds the float32 copy."""
        from voicetune.backends.csm.structure import trainable_view

        for p in model.parameters():
            p.requires_grad_(False)
        sidecar = dict(sidecar or {})
        self._dtype = _disk_dtype(model.config)
        self.device = torch.device(device)
        self.model, self.processor, self.base_dir = model, processor, base_dir
        self.base_ref, self.sidecar, self._view = base_ref, sidecar, trainable_view(model)
        self.speaker_id = int(sidecar.get("speaker_id", 0))
        self.context_texts = dict(sidecar.get("context_texts") or {})
        self._lora, self._loss, self._speed, self._train_mode = None, None, None, None
        self._placed, self._text_on_cpu = False, False
        self.set_train(True)
        backbone = sum(p.numel() for p in model.backbone_model.parameters())
        logger.info(
            "loaded CSM base %s (backbone %d layers x %d, %.1f M parameters; depth decoder %d x %d; "
            "%d codebooks) for %s",
            base_dir or "(in memory)",
            model.config.num_hidden_layers,
            model.config.hidden_size,
            backbone / 1e6,
            model.config.depth_decoder_config.num_hidden_layers,
            model.config.depth_decoder_config.hidden_size,
            model.config.num_codebooks,
            self.device,
        )

    def _place(self) -> Any:
        """The model on its device (moved there the first time; the codec and, while training, a frozen text
        embedding stay where set_train puts them)."""
        model = self._require()
        if not self._placed:
            codec, text = model.codec_model, model.embed_text_tokens
            for module in model.children():
                if module is not codec and not (module is text and self._text_on_cpu and self._train_mode):
                    module.to(self.device)
            self._placed = True
        return model

    def _require(self) -> Any:
        if self.model is None:
            raise RuntimeError("no base model loaded; call load_base(path, device) first")
        return self.model

    @property
    def frame_rate(self) -> float:
        return float(self._require().config.codec_config.frame_rate)

    @property
    def sample_rate(self) -> int:
        return int(self._require().config.codec_config.sampling_rate)

    # ---------------------------------------------------------------- what trains
    def configure_model(self, cfg: TrainConfig, run_dir: Path | None = None,
                        texts: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        """LoRA adapters (--finetune lora) or full finetuning minus --freeze; the speaker id. Returns a
        summary."""
        from voicetune.backends.adapters import has_lora, inject_lora
        from voicetune.backends.csm import structure

        model = self._require()
        self.opts = CsmOptions.of(cfg)
        self.speaker_id = self.opts.speaker_id
        self._lora = structure.lora_settings(cfg)
        if self._lora is not None and not has_lora(model):
            try:
                inject_lora(model, self._lora)
            except ValueError as e:
                raise BaseModelError(f"{e} (CSM layers: --lora-parts, --lora-targets)") from e
        trainable, total = structure.set_trainable(model, cfg)
        logger.info("training %.2f M of %.2f M CSM parameters (%s; Mimi codec frozen): %s", trainable / 1e6,
                    total / 1e6, cfg.finetune, structure.summarize(model))
        if cfg.finetune == "lora" and cfg.lr < 2e-5:
            logger.warning(
                "--lr %g is low for LoRA on CSM (adapters start at zero); 1e-4 to 5e-4 is usual", cfg.lr
            )
        logger.info("%s", LOSS_NOTE)
        return {
            "finetune": cfg.finetune,
            "trainable_params": trainable,
            "model_params": total,
            "lora": self._lora.to_dict() if self._lora else None,
            "depth_fraction": self.opts.depth_fraction,
        }

    def set_length_limits(self, max_audio_seconds: float = 0.0, max_text_tokens: int = 0) -> None:
        self._limits = {
            "max_audio_seconds": float(max_audio_seconds),
            "max_text_tokens": int(max_text_tokens),
        }

    # ---------------------------------------------------------------- features
    @contextlib.contextmanager
    def _codec_on_device(self) -> Iterator[Any]:
        """Mimi on the model's device while it encodes; back on the CPU afterwards when training."""
        codec = self._require().codec_model
        codec.to(self.device)
        try:
            yield codec
        finally:
            if self._train_mode:
                codec.to("cpu")

    def build_features(
        self, clips: Sequence[Clip], cache: Path, progress: Progress | None = None
    ) -> FeatureStore:
        """Mimi codes of ``clips`` (encoded once, cached under ``cache`` by content hash) and their
        prompts."""
        from voicetune.backends.csm.features import (
            CsmFeatureStore,
            PromptFormat,
            build_segments,
            codec_fingerprint,
        )

        model = self._require()
        config = model.config
        speakers = sorted({c.speaker for c in clips})
        ids = {s: self.speaker_id + i for i, s in enumerate(speakers)}
        if len(speakers) > 1:
            logger.info("speaker ids: %s (synthesis speaks as %d)", ids, self.speaker_id)
        prompts = PromptFormat(self.processor, config.audio_token_id, config.audio_eos_token_id)
        limits = {**self._limits, "max_positions": float(config.max_position_embeddings)}
        with self._codec_on_device() as codec:
            fingerprint = codec_fingerprint(codec, config.num_codebooks)
            segments, dropped = build_segments(
                clips,
                Path(cache),
                codec,
                config.num_codebooks,
                fingerprint,
                prompts,
                ids,
                self.sample_rate,
                self.frame_rate,
                limits,
                progress,
            )
        for seg in segments:
            self.context_texts[seg.sha] = seg.text
        return CsmFeatureStore(segments, config.audio_token_id, dropped, seed=torch.initial_seed() % (2**31),
                               context_clips=self.opts.context_clips,
                               context_frames=int(self.opts.context_seconds * self.frame_rate),
                               max_positions=config.max_position_embeddings)

    def collate(self, items: list[dict[str, torch.Tensor]]) -> Batch:
        from voicetune.backends.csm.features import collate

        speed = self._speed_settings()
        fraction = self.opts.depth_fraction if self.opts.trains_depth else 0.0
        batch = collate(items, self.processor.tokenizer.eos_token_id, speed.pad_multiple, fraction,
                        speed.depth_multiple)
        if self._text_on_cpu:  # the frozen text embedding stays on the CPU: look the batch up here
            with torch.no_grad():
                batch["text_embeds"] = self.model.embed_text_tokens(batch["tokens"])
        batch["frames"] = int(batch["target"].sum()) - len(items)  # without the end frames
        batch["positions"] = sum(int(it["tokens"].numel()) for it in items)
        return batch

    def graph_inputs(self, batch: Batch) -> dict[str, torch.Tensor] | None:
        from voicetune.backends.csm.loss import LOSS_KEYS

        return {k: batch[k] for k in LOSS_KEYS if k in batch}

    def batch_stats(self, batch: Batch) -> dict[str, float]:
        return {"audio_seconds": batch["frames"] / self.frame_rate, "tokens": float(batch["positions"])}

    # ---------------------------------------------------------------- training
    def _speed_settings(self) -> Any:
        from voicetune.backends.csm.loss import Speed

        return self._speed or Speed(pad_multiple=1, depth_multiple=1)

    def configure_training(self, cfg: TrainConfig, cuda_graphs: bool = False) -> None:
        """Attention kernels, bf16 frozen weights on a GPU (cast before they move there), a frozen text
        embedding kept on the CPU, compile, recomputation, padding. Before the optimizer."""
        from voicetune.backends.csm.loss import CsmLoss, resolve_speed
        from voicetune.backends.csm.structure import cast_for_training
        from voicetune.utils.device import resolve_precision

        model, opts = self._require(), CsmOptions.of(cfg)
        self.opts = opts
        if opts.attention == "eager":
            model.set_attn_implementation("eager")
        if self.device.type == "cuda" and resolve_precision(cfg.precision, self.device) == "bf16":
            trained = torch.bfloat16 if cfg.param_dtype == "bf16" else torch.float32
            cast_for_training(model, torch.bfloat16, trained)  # on the CPU when not yet placed
            # 263 M parameters in csm-1b, read at ~40 text positions per clip: looked up on the CPU instead
            self._text_on_cpu = not model.embed_text_tokens.weight.requires_grad
            if self._text_on_cpu and self._train_mode:
                model.embed_text_tokens.to("cpu")
        self._place()
        self._speed = resolve_speed(cfg, opts, self.device)
        self._loss = CsmLoss(
            self._speed, opts.backbone_weight, opts.depth_weight if opts.trains_depth else 0.0
        )
        logger.info(
            "CSM loss: depth decoder on %.4g of the frames, compile %s (%s), recompute %s, pad to %d%s%s",
            opts.depth_fraction,
            self._speed.compile,
            self._speed.compile_scope,
            self._speed.recompute,
            self._speed.pad_multiple,
            ", CUDA graphs" if cuda_graphs else "",
            ", text embedding on the CPU" if self._text_on_cpu else "",
        )

    def trainable(self) -> torch.nn.Module:
        """The model without its Mimi codec (backbone, depth decoder, heads, embeddings)."""
        self._require()
        return self._view

    def param_groups(self, cfg: TrainConfig) -> list[dict[str, Any]]:
        from voicetune.backends.csm.structure import param_groups

        return param_groups(self._require(), cfg)

    def loss(self, batch: Batch, cfg: TrainConfig) -> dict[str, torch.Tensor]:
        """{"loss", "backbone_ce", "depth_ce"} (loss.csm_loss) of a collated batch."""
        from voicetune.backends.csm.loss import CsmLoss, Speed

        if self._loss is None:
            opts = CsmOptions.of(cfg)
            self._loss = CsmLoss(
                Speed(), opts.backbone_weight, opts.depth_weight if opts.trains_depth else 0.0
            )
        return self._loss(self._place(), batch)

    def set_train(self, mode: bool) -> None:
        """True: training mode, the codec (and a frozen text embedding, see configure_training) parked on the
        CPU: training never runs them. False: inference, everything on the model's device. Cheap when the mode
        does not change (the loop calls it every step)."""
        if self._train_mode is mode:
            return
        model = self._require()
        model.train(mode)
        # the view is a ModuleDict of its own: trainable().training reports it
        self._view.training = bool(mode)
        model.codec_model.eval().to("cpu" if mode else self.device)
        if self._text_on_cpu:
            model.embed_text_tokens.to("cpu" if mode else self.device)
        self._train_mode = bool(mode)

    # ---------------------------------------------------------------- synthesis
    def _cap_seconds(self) -> float:
        cap = self.opts.synthesis_max_seconds
        own = self.sidecar.get("synthesis_max_seconds")
        return min(cap, float(own)) if own else cap

    def _render(self, texts: Sequence[str], refs: Sequence[Path], seed: int) -> list[Waveform]:
        from voicetune.backends.csm import synthesis

        if not refs:
            raise ValueError("synthesize needs at least one reference clip (refs)")
        was_training = bool(self._train_mode)
        self.set_train(False)
        model = self._place()
        try:
            references = synthesis.load_references(refs, self.context_texts, self.sample_rate,
                                                   self.opts.context_seconds)
            conversations = [synthesis.conversation(references, self.speaker_id, t) for t in texts]
            caps = [synthesis.max_frames(t, self.frame_rate, self._cap_seconds()) for t in texts]
            sampling = synthesis.Sampling(self.opts.temperature, self.opts.top_k, seed)
            results = synthesis.generate(model, self.processor, conversations, caps, sampling, self.device)
        finally:
            if was_training:
                self.set_train(True)
        return [Waveform(audio, self.sample_rate, meta) for audio, meta in results]

    def synthesize(self, text: str, refs: Sequence[Path], language: str, seed: int) -> Waveform:
        """Render ``text`` (any language: CSM reads the text as it is) in the voice of ``refs`` given as
        context; same seed, same audio; the global RNG is left untouched."""
        if not text.strip():
            raise ValueError("synthesize: the text is empty")
        return self._render([text], refs, seed)[0]

    def synthesize_batch(self, texts: Sequence[str], refs: Sequence[Path], language: str,
                         seeds: Sequence[int]) -> list[Waveform | Exception]:
        """Texts of one seed in one batched generation (the evaluation's case); otherwise one by one."""
        if len(texts) < 2 or len(set(seeds)) != 1:
            return super().synthesize_batch(texts, refs, language, seeds)
        out: list[Waveform | Exception] = [ValueError("synthesize: the text is empty")] * len(texts)
        todo = [i for i, t in enumerate(texts) if t.strip()]
        if todo:
            try:
                for i, wav in zip(todo, self._render([texts[i] for i in todo], refs, seeds[0]), strict=True):
                    out[i] = wav
            except Exception as e:  # noqa: BLE001 - a failed batch is a measured failure of its texts
                out = [e if i in todo else out[i] for i in range(len(texts))]
        return out

    # ---------------------------------------------------------------- state and export
    def _meta(self) -> dict[str, Any]:
        return {"speaker_id": self.speaker_id, "context_texts": dict(self.context_texts)}

    def save(self, path: Path) -> None:
        """The tensors that train (LoRA adapters, or the unfrozen weights) and what rebuilds them
        (structure.py)."""
        from voicetune.backends.csm.structure import trainable_state

        atomic_torch_save(trainable_state(self._require(), self._lora, self._meta()), Path(path))

    def load_trained(self, path: Path) -> None:
        """Load a state written by :meth:`save` (injecting its LoRA adapters first when it has some)."""
        from voicetune.backends.adapters import LoraSettings, has_lora, inject_lora
        from voicetune.backends.csm.structure import split_meta

        model = self._require()
        try:
            state = torch.load(Path(path), map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, ValueError) as e:
            raise BaseModelError(f"{path}: cannot load the trained CSM state ({e})") from e
        state, meta = split_meta(state)
        if meta.get("lora"):
            settings = LoraSettings.from_dict(meta["lora"])
            if not has_lora(model):
                inject_lora(model, settings)
            elif self._lora is not None and settings != self._lora:
                raise BaseModelError(
                    f"{path}: LoRA {settings} differs from the adapters of this model {self._lora}"
                )
            self._lora = settings
        view = self._view
        try:
            missing, unexpected = view.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise BaseModelError(
                f"{path}: does not fit the base model {self.base_dir} ({str(e)[:400]})"
            ) from e
        missing = [] if meta.get("partial") else missing
        if unexpected or missing:
            raise BaseModelError(f"{path}: not a CSM state of this base model (missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]})")
        self.speaker_id = int(meta.get("speaker_id", self.speaker_id))
        self.context_texts.update(meta.get("context_texts") or {})

    def export(self, out: Path) -> None:
        """The merged model folder (from_pretrained loads it unchanged), the LoRA adapter (peft format) for a
        LoRA run, and voicetune_csm.json (speaker id, reference transcripts)."""
        from voicetune.backends.csm.export import save_adapter, save_merged, write_sidecar

        model = self._require()
        out = Path(out)
        if self.base_dir is not None and out.resolve() == Path(self.base_dir).resolve():
            raise ValueError(f"{out}: refusing to export onto the base model folder; choose another folder")
        out.mkdir(parents=True, exist_ok=True)
        save_merged(model, self.processor, out, self._dtype)
        if self._lora is not None:
            save_adapter(model, self._lora, out, self.base_ref)
        keep: dict[str, Any] = {
            k: self.sidecar[k] for k in ("untrained", "note", "synthesis_max_seconds") if k in self.sidecar
        }
        write_sidecar(out, {"format": 1, **keep, **self._meta(), "base": self.base_ref})
        logger.info("exported the CSM model to %s%s", out, " (+ LoRA adapter)" if self._lora else "")


def _disk_dtype(config: Any) -> torch.dtype:
    """The dtype the base's weights were stored in (float32 when the config does not say)."""
    name = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
    return {"bfloat16": torch.bfloat16, "torch.bfloat16": torch.bfloat16, "float16": torch.float16,
            "torch.float16": torch.float16}.get(name, torch.float32)
