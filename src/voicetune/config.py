"""Typed configs for every stage, with one help text per field, validation at load time and YAML I/O.

Each field is declared with :func:`opt`, whose ``help`` is the field's documentation: the CLI builds
``--help`` from it and validation errors quote the option that fixes them. YAML is only a
serialisation of these dataclasses; unknown keys are errors, not silently ignored.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from voicetune.utils.io import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value is invalid; the message names the option that fixes it."""


def opt(default: Any, help: str, *, choices: tuple | None = None, cli: bool = True) -> Any:  # noqa: A002
    """Declare a config field with its documentation (and optional allowed values)."""
    meta = {"help": help, "choices": choices, "cli": cli}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def field_help(cls: type, name: str) -> str:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(name)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _check_choices(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        if choices and getattr(obj, f.name) not in choices:
            raise ConfigError(
                f"{f.name}={getattr(obj, f.name)!r} is not one of {list(choices)}; "
                f"set --{f.name.replace('_', '-')} to one of them"
            )


@dataclass
class PrepareConfig:
    """Settings of `voicetune prepare`: audio in, Coqui/AllTalk-format dataset out."""

    language: str = opt(
        "en", "Language code of the recordings (ISO 639-1, e.g. en, de), or 'auto' to detect it per file."
    )
    asr_model: str = opt(
        "auto",
        "faster-whisper model name (e.g. large-v3, downloaded when the hub is reachable) or a local "
        "CTranslate2 folder. 'auto' picks the best available: a cached or downloadable large model, "
        "else the packaged tiny.en (English only).",
    )
    speaker_name: str = opt(
        "speaker", "Speaker name written into the metadata CSVs (inputs given without a speaker of their own)."
    )
    speaker_folders: bool = opt(
        False, "Each first-level subfolder of INPUT_DIR holds one speaker, named after the folder."
    )
    sample_rate: int = opt(22050, "Sample rate of the written clips (XTTS trains at 22050 Hz).")
    min_seconds: float = opt(1.0, "Shorter speech segments are merged with neighbours or extended.")
    max_seconds: float = opt(11.6, "Longer segments are split at the longest pause (XTTS max_wav_length is 11.6 s).")
    vad_threshold: float = opt(0.5, "Silero VAD speech probability threshold (0-1).")
    min_silence_ms: int = opt(300, "Silence shorter than this does not end a speech segment.")
    pad_ms: int = opt(150, "Audio kept before and after each speech segment.")
    min_speech_ms: int = opt(250, "VAD speech shorter than this is ignored (clicks, breaths).")
    merge_gap_ms: int = opt(
        700, "Segments shorter than --min-seconds are merged with a neighbour across pauses up to this long."
    )
    asr_beam_size: int = opt(5, "Beam size of the ASR decoder (1 is fastest, 5 is Whisper's default).")
    asr_batch_size: int = opt(
        8, "Windows of ~28 s (several clips packed together) decoded per batched ASR call; larger is faster "
        "on a GPU."
    )
    asr_verify: str = opt(
        "uncertain",
        "Second ASR opinion (greedy decoding with temperature fallback, or --asr-verify-model): for "
        "'uncertain' clips only (low confidence, no words, repetition), for 'all' clips, or 'off'. Clips whose "
        "two transcripts disagree, or stay unconfident, are quarantined as needs_review.",
        choices=("off", "uncertain", "all"),
    )
    asr_verify_model: str = opt(
        "", "Model for the second opinion (name or local folder); empty: the same model, decoded differently."
    )
    asr_recheck_logprob: float = opt(
        -0.5, "First-pass transcripts whose mean word log-probability is below this get a second opinion."
    )
    max_asr_disagreement: float = opt(
        0.25, "Word error rate between the two ASR opinions (or a given transcript and ASR) above which a "
        "clip needs review."
    )
    text_normalization: str = opt(
        "xtts",
        "Training text from the transcript: 'xtts' spells out numbers, abbreviations and symbols with "
        "coqui-tts's XTTS rules (the raw transcript is kept as raw_text); 'none' only cleans whitespace.",
        choices=("xtts", "none"),
    )
    max_no_speech_prob: float = opt(
        0.6, "Clips whose ASR no-speech probability exceeds this are quarantined (no usable speech)."
    )
    min_avg_logprob: float = opt(
        -1.0, "Clips whose ASR average token log-probability is below this are quarantined (unreliable text)."
    )
    target_lufs: float = opt(-23.0, "Loudness target of written clips (EBU R128 integrated loudness).")
    peak_dbfs: float = opt(-1.0, "True-peak ceiling of written clips (a look-ahead limiter enforces it).")
    max_clipping_ratio: float = opt(
        0.001, "Clips with more than this share of clipped samples (in the source) are quarantined."
    )
    min_snr_db: float = opt(15.0, "Clips whose estimated signal-to-noise ratio is below this (dB) are quarantined.")
    max_silence_ratio: float = opt(0.6, "Clips whose share of non-speech (VAD) frames exceeds this are quarantined.")
    max_rate_z: float = opt(
        3.5, "Clips whose speaking rate (characters/s) is a robust z-score further than this from the "
        "speaker's median are quarantined (wrong transcript or audio)."
    )
    qa_mos: str = opt(
        "auto",
        "Predicted MOS (DistillMOS) per clip: 'on', 'off', or 'auto' (on with a CUDA GPU, off on CPU where "
        "it costs ~4x the rest of prepare).",
        choices=("auto", "on", "off"),
    )
    min_mos: float = opt(2.5, "Clips whose predicted MOS (1-5) is below this are quarantined.")
    qa_speaker: bool = opt(True, "Check that every clip has the voice of its speaker (Resemblyzer).")
    min_speaker_similarity: float = opt(
        0.75, "Clips whose speaker-embedding cosine to their speaker's centroid is below this are "
        "quarantined (another voice)."
    )
    eval_fraction: float = opt(0.15, "Fraction of clips held out for evaluation.")
    min_eval_clips: int = opt(2, "At least this many clips go to the eval split (when there are enough).")
    seed: int = opt(1234, "Seed of the deterministic train/eval split.")
    device: str = opt("auto", "Device for VAD/ASR: auto, cpu or cuda.", choices=("auto", "cpu", "cuda"))

    def __post_init__(self) -> None:
        _check_choices(self)
        _check(self.max_seconds <= 29.0, "max_seconds must be <= 29 (Whisper hears 30 s); fix --max-seconds")
        _check(self.asr_batch_size >= 1, "asr_batch_size must be >= 1; fix --asr-batch-size")
        _check(self.asr_recheck_logprob < 0.0, "asr_recheck_logprob must be < 0; fix --asr-recheck-logprob")
        _check(self.max_asr_disagreement >= 0.0, "max_asr_disagreement must be >= 0; fix --max-asr-disagreement")
        _check(self.peak_dbfs <= 0.0, "peak_dbfs must be <= 0; fix --peak-dbfs")
        _check(0.0 <= self.max_clipping_ratio <= 1.0, "max_clipping_ratio must lie in [0, 1]; fix --max-clipping-ratio")
        _check(0.0 < self.max_silence_ratio <= 1.0, "max_silence_ratio must lie in (0, 1]; fix --max-silence-ratio")
        _check(self.max_rate_z > 0.0, "max_rate_z must be > 0; fix --max-rate-z")
        _check(1.0 <= self.min_mos <= 5.0, "min_mos must lie in [1, 5]; fix --min-mos")
        _check(-1.0 <= self.min_speaker_similarity <= 1.0,
               "min_speaker_similarity must lie in [-1, 1]; fix --min-speaker-similarity")
        _check(bool(re.fullmatch(r"auto|[a-z]{2,3}(-[A-Za-z]+)?", self.language)),
               f"language {self.language!r} must be an ISO 639-1 code like en or de, or auto; fix --language")
        _check(0 < self.min_seconds < self.max_seconds,
               f"min_seconds ({self.min_seconds}) must be > 0 and < max_seconds ({self.max_seconds}); "
               "fix --min-seconds/--max-seconds")
        _check(0.0 < self.vad_threshold < 1.0, "vad_threshold must lie in (0, 1); fix --vad-threshold")
        for name in ("min_silence_ms", "pad_ms", "min_speech_ms", "merge_gap_ms"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0; fix --{name.replace('_', '-')}")
        _check(self.asr_beam_size >= 1, "asr_beam_size must be >= 1; fix --asr-beam-size")
        _check(0.0 < self.max_no_speech_prob <= 1.0, "max_no_speech_prob must lie in (0, 1]; fix --max-no-speech-prob")
        _check(self.min_avg_logprob < 0.0, "min_avg_logprob must be < 0; fix --min-avg-logprob")
        _check(0.0 <= self.eval_fraction < 1.0, "eval_fraction must lie in [0, 1); fix --eval-fraction")
        _check(self.sample_rate in (16000, 22050, 24000, 44100, 48000),
               "sample_rate must be one of 16000, 22050, 24000, 44100, 48000; fix --sample-rate")
        _check(bool(self.speaker_name.strip()) and "|" not in self.speaker_name,
               "speaker_name must be non-empty and contain no '|'; fix --speaker-name")


RECOMPUTE_MODES = ("none", "mlp", "layer")  # what the backward pass recomputes instead of keeping; fastest first


def recompute_fields(mode: str) -> dict[str, bool]:
    """The TrainConfig fields of a recomputation mode (one of :data:`RECOMPUTE_MODES`)."""
    if mode not in RECOMPUTE_MODES:
        raise ValueError(f"recomputation mode must be one of {RECOMPUTE_MODES}, not {mode!r}")
    return {"checkpoint_mlp": mode == "mlp", "gradient_checkpointing": mode == "layer"}


@dataclass
class TrainConfig:
    """Settings of `voicetune train`."""

    backend: str = opt("xtts", "Model backend.", choices=("xtts",))
    max_steps: int = opt(0, "Stop after this many optimizer steps (0: use --epochs).")
    epochs: int = opt(10, "Passes over the training split (used when --max-steps is 0).")
    batch_size: int = opt(2, "Clips per micro-batch.")
    grad_accum: int = opt(1, "Micro-batches accumulated per optimizer step (effective batch = batch_size x grad_accum).")
    lr: float = opt(5e-6, "Peak learning rate of AdamW (the Coqui XTTS recipe uses 5e-6).")
    weight_decay: float = opt(1e-2, "AdamW weight decay (applied to weight matrices only).")
    betas: list = opt([0.9, 0.96], "AdamW betas.")
    warmup_steps: int = opt(0, "Linear learning-rate warm-up steps.")
    grad_clip: float = opt(1.0, "Clip the global gradient norm to this value (0 disables).")
    precision: str = opt(
        "auto", "auto: bf16 autocast on CUDA GPUs that support it, fp32 on CPU. fp16: autocast with dynamic loss "
        "scaling (GPUs without bf16); fp32: no autocast.", choices=("auto", "bf16", "fp16", "fp32")
    )
    text_ce_weight: float = opt(0.01, "Weight of the text cross-entropy in the total loss (Coqui default 0.01).")
    mel_ce_weight: float = opt(1.0, "Weight of the audio-code (mel) cross-entropy in the total loss.")
    save_every: int = opt(0, "Write a checkpoint every N optimizer steps (0: only at the end).")
    keep_last: int = opt(3, "Keep this many most recent step checkpoints on disk.")
    log_every: int = opt(1, "Log losses every N optimizer steps.")
    seed: int = opt(1, "Seed for data order and initialisation.")
    device: str = opt("auto", "auto, cpu or cuda (or cuda:N).")
    num_workers: int = opt(0, "DataLoader worker processes (features are cached, so 0 is usually enough).")
    # In-loop evaluation (voicetune.evaluation.in_loop): the best checkpoint and early stopping follow voice
    # quality on a fixed probe set, not the loss. --eval-every 0 --eval-every-epochs 0 turns it off.
    eval_every: int = opt(0, "Evaluate voice quality every N optimizer steps (0: use --eval-every-epochs).")
    eval_every_epochs: int = opt(
        1, "Evaluate at the end of every N epochs (when --eval-every is 0). With both 0, no in-loop evaluation "
        "(no baseline, no best checkpoint, no early stopping).")
    eval_max_overhead: float = opt(
        0.15, "Skip scheduled evaluations that would make evaluation take more than this fraction of the wall "
        "time (measured as training goes; 0: never skip). The last step is always evaluated.")
    eval_max_sentences: int = opt(4, "Eval-split sentences (with their real recordings) in every evaluation.")
    eval_probes: int = opt(
        4, "Fixed probe sentences of the language in every evaluation (4 covers short, numbers/names, question "
        "and long).")
    eval_num_references: int = opt(3, "Reference clips (longest of the train split) that condition synthesis.")
    eval_seed: int = opt(0, "Sampling seed of every evaluation render (same inputs, same seed at every step).")
    eval_asr_model: str = opt("auto", "ASR model of the WER round trip (same meaning as in prepare).")
    eval_intrusive: bool = opt(True, "Also MCD/PESQ/STOI against the real recordings of the eval-split sentences.")
    eval_weight_similarity: float = opt(
        1.0, "Composite score weight of the speaker-similarity gain (as a share of the gap between the base model "
        "and the real recordings).")
    eval_weight_wer: float = opt(2.0, "Composite score weight of the WER change (lower is better).")
    eval_weight_cer: float = opt(0.0, "Composite score weight of the CER change (use it instead of WER for zh/ja).")
    eval_weight_mos: float = opt(0.5, "Composite score weight of the predicted-MOS change (per MOS point).")
    eval_weight_failures: float = opt(
        1.0, "Composite score weight of the change in the share of sentences flagged as failures (runaway, too "
        "short, near silence, repetition).")
    early_stop_patience: int = opt(
        3, "Stop when the composite score has not improved for this many evaluations (0: never stop early).")
    early_stop_min_delta: float = opt(0.01, "A composite-score improvement must exceed this to count.")
    wer_guard: str = opt(
        "stop", "When an evaluation's WER exceeds the base model's by more than --wer-guard-margin: stop "
        "training, warn, or do nothing (off).", choices=("stop", "warn", "off"))
    wer_guard_margin: float = opt(0.10, "WER rise over the base model that trips the WER guard (0.10 = 10 points).")
    # Speed and memory (benchmarks/README.md has the measurements behind the defaults).
    fast_loss: bool = opt(
        True, "Packed GPT forward for the training loss (padding at the end of each row, so attention needs no "
        "mask and runs the flash kernel; same loss as coqui-tts's GPT.forward). false: coqui-tts's GPT.forward.")
    attention: str = opt(
        "sdpa", "Attention kernels: sdpa (fused scaled_dot_product_attention) or eager (the original math).",
        choices=("sdpa", "eager"))
    compile: str = opt(
        "auto", "torch.compile the training loss: auto (on CUDA GPUs with Triton), on, off. The first step of "
        "each padded length compiles (about a minute); later steps reuse it.", choices=("auto", "on", "off"))
    compile_mode: str = opt(
        "default", "torch.compile mode; reduce-overhead adds CUDA graphs (fewer launches, more memory).",
        choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune"))
    compile_scope: str = opt(
        "layers", "What one compiled graph covers: layers (one transformer layer, reused by all 30, plus the "
        "conditioning encoder and the loss head: compiles in seconds) or model (the whole loss: fewer launches, "
        "minutes of compiling per padded length).", choices=("layers", "model"))
    pad_multiple: int = opt(
        64, "Pad each batch's sequence length up to a multiple of this (1: no padding), so that a compiled graph "
        "is reused; padding is ignored by the loss.")
    cuda_graphs: str = opt(
        "auto", "Capture each micro-batch's forward + backward in a CUDA graph and replay it (one launch instead "
        "of ~1,800): auto (on a CUDA GPU with --param-dtype bf16 and a compile mode without its own graphs), on, "
        "off. One graph per padded length, captured the first time it starts a step.",
        choices=("auto", "on", "off"))
    gradient_checkpointing: bool = opt(
        False, "Recompute each transformer layer's activations in the backward pass (less memory, ~30% slower).")
    checkpoint_mlp: bool = opt(
        False, "Recompute only each transformer layer's MLP (norm, first projection, activation: its largest "
        "tensors) in the backward pass. Less memory than none at a few percent of speed; unlike "
        "--gradient-checkpointing it draws no random numbers, so it works with --cuda-graphs. Packed loss only.")
    param_dtype: str = opt(
        "fp32", "Dtype of the trained weights and gradients. bf16 halves their memory; the optimizer then keeps "
        "the updates exact on average by stochastic rounding (needs --precision bf16 or auto on a GPU).",
        choices=("fp32", "bf16"))
    optimizer_state_dtype: str = opt(
        "fp32", "Dtype of AdamW's moment estimates (bf16: stochastically rounded, half the memory; needs "
        "--param-dtype bf16).", choices=("fp32", "bf16"))
    # Optimizer, schedule, what trains, data, robustness and observability (voicetune.training).
    optimizer: str = opt(
        "adamw", "Optimizer: adamw (decoupled weight decay), adam, sgd (with --momentum) or rmsprop (with "
        "--momentum); fused or foreach kernels where available.", choices=("adamw", "adam", "sgd", "rmsprop"))
    momentum: float = opt(0.9, "Momentum of --optimizer sgd and rmsprop.")
    scheduler: str = opt(
        "constant", "Learning-rate schedule after the --warmup-steps: constant; cosine (down to lr x --min-lr-ratio "
        "at the last step); cosine_restarts (warm restarts every --restart-steps); linear (down to lr x "
        "--min-lr-ratio); step (x --lr-gamma every --step-size steps); multistep (x --lr-gamma after each of "
        "--milestones); exponential (x --lr-gamma every step).",
        choices=("constant", "cosine", "cosine_restarts", "linear", "step", "multistep", "exponential"))
    min_lr_ratio: float = opt(0.0, "Floor of the cosine, cosine_restarts and linear schedules, as a fraction of --lr.")
    restart_steps: int = opt(0, "Length of the first cosine_restarts period in steps (0: a quarter of the run).")
    restart_mult: int = opt(1, "Each cosine_restarts period is this many times as long as the previous one.")
    step_size: int = opt(0, "Steps between the LR drops of --scheduler step (0: a third of the run).")
    milestones: list = opt([], "Steps after which --scheduler multistep multiplies the LR by --lr-gamma.")
    lr_gamma: float = opt(0.5, "LR factor of the step, multistep and exponential schedules.")
    finetune: str = opt(
        "full", "What trains: full (every GPT weight not in --freeze) or lora (low-rank adapters on the transformer "
        "layers, --lora-*; checkpoints hold only the adapters, export merges them into the weights).",
        choices=("full", "lora"))
    lora_rank: int = opt(16, "LoRA rank.")
    lora_alpha: float = opt(32.0, "LoRA alpha (the adapter update is scaled by alpha / rank).")
    lora_dropout: float = opt(0.05, "Dropout on the LoRA adapters' input.")
    lora_targets: str = opt(
        "c_attn,c_proj,c_fc", "Comma-separated GPT-2 modules that get LoRA adapters: c_attn (fused q/k/v), c_proj "
        "(attention output and MLP output), c_fc (MLP input).")
    freeze: str = opt(
        "", "Comma-separated GPT parts that do not train: conditioning_encoder, conditioning_perceiver, "
        "text_embedding, text_pos_embedding, text_head, mel_embedding, mel_pos_embedding, mel_head, transformer, "
        "final_norm.")
    lr_text_mult: float = opt(1.0, "LR multiplier of the text side (text_embedding, text_pos_embedding, text_head).")
    lr_audio_mult: float = opt(1.0, "LR multiplier of the audio side (mel_embedding, mel_pos_embedding, mel_head).")
    lr_cond_mult: float = opt(1.0, "LR multiplier of the conditioning encoder and perceiver.")
    dropout: float = opt(-1.0, "Dropout of the GPT-2 layers while training (-1: the base model's, 0.1 in XTTS-v2).")
    extend_vocab: bool = opt(
        False, "Extend the BPE vocabulary with the characters (and merges for the words) of the transcripts that it "
        "cannot encode (new scripts, accented names); text_embedding and text_head grow, new rows start at the mean "
        "of the old ones. The run keeps the extended vocab.json and export writes it.")
    extend_vocab_size: int = opt(
        256, "At most this many new tokens from --extend-vocab (every missing character is added regardless).")
    max_audio_seconds: float = opt(
        0.0, "Drop training clips longer than this (0: the model's limit, 11.6 s for XTTS-v2); the log and "
        "run.json count the clips dropped and why.")
    max_text_tokens: int = opt(0, "Drop training clips with more transcript tokens (0: the model's limit, 200 for XTTS).")
    bucket_window: int = opt(
        16, "Length-bucketed batching: within windows of this many steps of each shuffled epoch, clips are sorted "
        "by length, so a micro-batch holds clips of similar length (less padding). 0 or 1: plain shuffling.")
    auto: bool = opt(
        False, "Before training, measure peak GPU memory over a few steps at growing batch sizes (as `voicetune "
        "doctor --dataset` does) and set --batch-size, --grad-accum, --precision and the recomputation "
        "(--checkpoint-mlp, then --gradient-checkpointing, when two clips do not fit) for this GPU, keeping the effective batch (batch_size x grad_accum). On a CPU: CPU settings.")
    mem_every: int = opt(
        50, "Log a parseable memory line every N steps ([mem] step=N alloc_gib=.. peak_gib=.. reserved_gib=..; "
        "rss_gib on CPU); 0: never.")

    def __post_init__(self) -> None:
        _check_choices(self)
        _check(self.max_steps >= 0, "max_steps must be >= 0; fix --max-steps")
        _check(self.epochs >= 1 or self.max_steps > 0, "set --epochs >= 1 or --max-steps > 0")
        _check(self.batch_size >= 1, "batch_size must be >= 1; fix --batch-size")
        _check(self.grad_accum >= 1, "grad_accum must be >= 1; fix --grad-accum")
        _check(self.lr > 0 and math.isfinite(self.lr), "lr must be a positive number; fix --lr")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas must be two numbers in [0, 1)")
        _check(self.grad_clip >= 0, "grad_clip must be >= 0; fix --grad-clip")
        _check(self.keep_last >= 1, "keep_last must be >= 1; fix --keep-last")
        _check(self.log_every >= 1, "log_every must be >= 1; fix --log-every")
        for name in ("eval_every", "eval_every_epochs", "eval_max_sentences", "eval_probes", "early_stop_patience"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0; fix --{name.replace('_', '-')}")
        _check(0.0 <= self.eval_max_overhead < 1.0, "eval_max_overhead must lie in [0, 1); fix --eval-max-overhead")
        _check(self.eval_max_sentences + self.eval_probes >= 1,
               "an evaluation needs sentences: set --eval-max-sentences or --eval-probes >= 1")
        _check(self.eval_num_references >= 1, "eval_num_references must be >= 1; fix --eval-num-references")
        for name in ("eval_weight_similarity", "eval_weight_wer", "eval_weight_cer", "eval_weight_mos",
                     "eval_weight_failures", "early_stop_min_delta", "wer_guard_margin"):
            value = getattr(self, name)
            _check(value >= 0 and math.isfinite(value), f"{name} must be >= 0; fix --{name.replace('_', '-')}")
        _check(self.pad_multiple >= 1, "pad_multiple must be >= 1; fix --pad-multiple")
        _check(not self.checkpoint_mlp or self.fast_loss,
               "checkpoint_mlp works on the packed loss; set --fast-loss (or drop --checkpoint-mlp)")
        _check(not (self.checkpoint_mlp and self.gradient_checkpointing),
               "--gradient-checkpointing recomputes whole layers, MLPs included; drop --checkpoint-mlp")
        _check(self.param_dtype == "fp32" or self.precision != "fp32",
               "param_dtype bf16 trains under bf16 autocast; set --precision auto or bf16 (or --param-dtype fp32)")
        _check(self.optimizer_state_dtype == "fp32" or self.param_dtype == "bf16",
               "optimizer_state_dtype bf16 needs --param-dtype bf16")
        _check(self.fast_loss or self.compile != "on", "compile needs the packed loss; set --fast-loss or --compile off")
        _check(self.cuda_graphs != "on" or self.param_dtype == "bf16",
               "cuda_graphs on needs gradients in fixed buffers: set --param-dtype bf16 (or --cuda-graphs auto/off)")
        _check(self.cuda_graphs != "on" or self.compile_mode not in ("reduce-overhead", "max-autotune"),
               f"--compile-mode {self.compile_mode} captures its own CUDA graphs; use --compile-mode default with "
               "--cuda-graphs on (or --cuda-graphs off)")
        _check(self.cuda_graphs != "on" or not self.gradient_checkpointing,
               "cuda_graphs on cannot capture gradient checkpointing (it saves and restores the RNG state); "
               "drop --gradient-checkpointing or set --cuda-graphs auto/off")
        self._check_training()

    @property
    def recompute(self) -> str:
        """What the backward pass recomputes (one of :data:`RECOMPUTE_MODES`): --gradient-checkpointing whole
        layers, --checkpoint-mlp each layer's MLP."""
        return "layer" if self.gradient_checkpointing else "mlp" if self.checkpoint_mlp else "none"

    def _check_training(self) -> None:
        """Optimizer, schedule, what trains, data and observability options (voicetune.training)."""
        from voicetune.backends.xtts.parts import LORA_TARGETS, PARTS, split_names

        _check(0.0 <= self.momentum < 1.0, "momentum must lie in [0, 1); fix --momentum")
        _check(0.0 <= self.min_lr_ratio <= 1.0, "min_lr_ratio must lie in [0, 1]; fix --min-lr-ratio")
        _check(self.restart_steps >= 0, "restart_steps must be >= 0; fix --restart-steps")
        _check(self.restart_mult >= 1, "restart_mult must be >= 1; fix --restart-mult")
        _check(self.step_size >= 0, "step_size must be >= 0; fix --step-size")
        _check(0.0 < self.lr_gamma <= 1.0, "lr_gamma must lie in (0, 1]; fix --lr-gamma")
        _check(all(float(m) >= 1 and float(m) == int(m) for m in self.milestones),
               "milestones must be whole step numbers >= 1; fix --milestones")
        _check(self.scheduler != "multistep" or bool(self.milestones), "--scheduler multistep needs --milestones")
        _check(self.lora_rank >= 1, "lora_rank must be >= 1; fix --lora-rank")
        _check(self.lora_alpha > 0, "lora_alpha must be > 0; fix --lora-alpha")
        _check(0.0 <= self.lora_dropout < 1.0, "lora_dropout must lie in [0, 1); fix --lora-dropout")
        targets = split_names(self.lora_targets)
        _check(bool(targets) and set(targets) <= set(LORA_TARGETS),
               f"lora_targets {self.lora_targets!r}: choose from {list(LORA_TARGETS)}; fix --lora-targets")
        frozen = split_names(self.freeze)
        unknown = sorted(set(frozen) - set(PARTS))
        _check(not unknown, f"freeze: unknown part(s) {unknown}; choose from {list(PARTS)}; fix --freeze")
        _check(self.finetune == "lora" or set(PARTS) - set(frozen),
               "--freeze names every part: nothing would train; remove some, or use --finetune lora")
        for name in ("lr_text_mult", "lr_audio_mult", "lr_cond_mult"):
            value = getattr(self, name)
            _check(value > 0 and math.isfinite(value),
                   f"{name} must be > 0 (to stop a part training use --freeze); fix --{name.replace('_', '-')}")
        _check(self.dropout == -1.0 or 0.0 <= self.dropout < 1.0, "dropout must be -1 or lie in [0, 1); fix --dropout")
        _check(self.extend_vocab_size >= 1, "extend_vocab_size must be >= 1; fix --extend-vocab-size")
        _check(self.max_audio_seconds >= 0, "max_audio_seconds must be >= 0; fix --max-audio-seconds")
        _check(self.max_text_tokens >= 0, "max_text_tokens must be >= 0; fix --max-text-tokens")
        _check(self.bucket_window >= 0, "bucket_window must be >= 0; fix --bucket-window")
        _check(self.mem_every >= 0, "mem_every must be >= 0; fix --mem-every")
        _check(self.param_dtype == "fp32" or self.precision != "fp16",
               "param_dtype bf16 cannot train under --precision fp16; use --precision bf16 (or --param-dtype fp32)")
        _check(self.param_dtype == "fp32" or self.optimizer == "adamw",
               "param_dtype bf16 has its own AdamW; use --optimizer adamw (or --param-dtype fp32)")


@dataclass
class EvalConfig:
    """Settings of `voicetune evaluate`."""

    max_sentences: int = opt(8, "Evaluate at most this many eval-split sentences.")
    num_references: int = opt(3, "Reference clips (longest of the train split) used to condition synthesis.")
    asr_model: str = opt("auto", "ASR model for the round trip (same meaning as in prepare).")
    seed: int = opt(0, "Sampling seed: every checkpoint is rendered on the same inputs with the same seed.")
    device: str = opt("auto", "auto, cpu or cuda.")
    probes: int = opt(
        4, "Fixed probe sentences of the language rendered besides the eval-split ones (probe-set evaluation; "
        "`voicetune evaluate RUN_DIR` uses the run's own settings unless given).")
    intrusive: bool = opt(True, "Also MCD/PESQ/STOI against the real recordings of the eval-split sentences.")

    def __post_init__(self) -> None:
        _check(self.max_sentences >= 1, "max_sentences must be >= 1; fix --max-sentences")
        _check(self.probes >= 0, "probes must be >= 0; fix --probes")
        _check(self.num_references >= 1, "num_references must be >= 1; fix --num-references")


_CONFIGS = {"prepare": PrepareConfig, "train": TrainConfig, "evaluate": EvalConfig}


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp) or tp
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin in (int, float, str, bool) and not isinstance(value, origin):
        raise ConfigError(f"{name} must be of type {origin.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], *, source: str = "config") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys and wrongly typed values."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of options, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {unknown}; valid options are {sorted(known)}")
    kwargs = {k: _coerce(v, hints[k], f"{source}: {k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_yaml(cls: type[T], path: Path) -> T:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    return from_dict(cls, data, source=str(path))


def save_yaml(cfg: Any, path: Path) -> None:
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def merge(cfg: T, overrides: dict[str, Any]) -> T:
    """Return a copy of ``cfg`` with the non-None ``overrides`` applied (and validated)."""
    data = to_dict(cfg)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(type(cfg), data, source="options")
