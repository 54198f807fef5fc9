"""Typed configs for every stage, with one help text per field, validation at load time and YAML I/O.

Each field is declared with :func:`opt`, whose ``help`` is the field's documentation: the CLI builds
``--help`` from it and validation errors quote the option (the command-line flag) that fixes them. YAML is
only a serialisation of these dataclasses; unknown keys are errors, not silently ignored.

:class:`TrainConfig` holds the generic training fields and two groups: ``eval`` (:class:`EvalOptions`, the one
definition of how voice quality is evaluated, used by in-loop evaluation, ``voicetune evaluate`` and the
evaluation suite) and ``backend_options`` (a :class:`BackendOptions` subclass that each backend owns and
validates, e.g. ``voicetune.backends.xtts.options.XttsOptions``). This module never imports a backend: the
functions that need a backend's options class take it as ``options_for`` (the backend registry,
:mod:`voicetune.backends.registry`, passes its own). Every option also has a flat name, the command-line flag
without dashes (``eval_every``, ``dropout``): the CLI, ``voicetune.train(**options)`` and :func:`merge` use
it.

YAML layout of a TrainConfig::

    backend: xtts
    max_steps: 500        # generic fields
    eval:                 # EvalOptions
      every_epochs: 1
    xtts:                 # the backend's options, under its name
      dropout: 0.0

Config files of earlier versions (every option at the top level) still load: their keys are mapped to the
sections, with one log line saying so.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from voicetune.utils import options
from voicetune.utils.io import atomic_write_text

logger = logging.getLogger(__name__)

# The option machinery (declaring a field, the checks all configs share) lives in utils.options; its public
# names are importable from here too, beside the configs that use them.
ConfigError = options.ConfigError
opt = options.opt
check_fields = options.check_fields
field_help = options.field_help
flag_of = options.flag_of
flat_name = options.flat_name
_check = options._check
coerce = options.coerce

T = TypeVar("T")
B = TypeVar("B", bound="BackendOptions")


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
        "speaker",
        "Speaker name written into the metadata CSVs (inputs given without a speaker of their own).",
    )
    speaker_folders: bool = opt(
        False, "Each first-level subfolder of INPUT_DIR holds one speaker, named after the folder."
    )
    sample_rate: int = opt(22050, "Sample rate of the written clips (XTTS trains at 22050 Hz).")
    min_seconds: float = opt(1.0, "Shorter speech segments are merged with neighbours or extended.")
    max_seconds: float = opt(
        11.6, "Longer segments are split at the longest pause (XTTS max_wav_length is 11.6 s)."
    )
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
        "'uncertain' clips only (low confidence, no words, repetition), for 'all' clips, or 'off'. Clips "
        "whose two transcripts disagree, or stay unconfident, are quarantined as needs_review.",
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
    min_snr_db: float = opt(
        15.0, "Clips whose estimated signal-to-noise ratio is below this (dB) are quarantined."
    )
    max_silence_ratio: float = opt(
        0.6, "Clips whose share of non-speech (VAD) frames exceeds this are quarantined."
    )
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
    seed: int = opt(1234, "Seed of the deterministic train/eval split.", low=0, high=2**32 - 1)
    device: str = opt("auto", "Device for VAD/ASR: auto, cpu or cuda.", choices=("auto", "cpu", "cuda"))

    def __post_init__(self) -> None:
        check_fields(self)
        _check(self.max_seconds <= 29.0, "max_seconds must be <= 29 (Whisper hears 30 s); fix --max-seconds")
        _check(self.asr_batch_size >= 1, "asr_batch_size must be >= 1; fix --asr-batch-size")
        _check(self.asr_recheck_logprob < 0.0, "asr_recheck_logprob must be < 0; fix --asr-recheck-logprob")
        _check(
            self.max_asr_disagreement >= 0.0, "max_asr_disagreement must be >= 0; fix --max-asr-disagreement"
        )
        _check(self.peak_dbfs <= 0.0, "peak_dbfs must be <= 0; fix --peak-dbfs")
        _check(
            0.0 <= self.max_clipping_ratio <= 1.0,
            "max_clipping_ratio must lie in [0, 1]; fix --max-clipping-ratio",
        )
        _check(
            0.0 < self.max_silence_ratio <= 1.0,
            "max_silence_ratio must lie in (0, 1]; fix --max-silence-ratio",
        )
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
        _check(
            0.0 < self.max_no_speech_prob <= 1.0,
            "max_no_speech_prob must lie in (0, 1]; fix --max-no-speech-prob",
        )
        _check(self.min_avg_logprob < 0.0, "min_avg_logprob must be < 0; fix --min-avg-logprob")
        _check(0.0 <= self.eval_fraction < 1.0, "eval_fraction must lie in [0, 1); fix --eval-fraction")
        _check(self.sample_rate in (16000, 22050, 24000, 44100, 48000),
               "sample_rate must be one of 16000, 22050, 24000, 44100, 48000; fix --sample-rate")
        _check(bool(self.speaker_name.strip()) and "|" not in self.speaker_name,
               "speaker_name must be non-empty and contain no '|'; fix --speaker-name")


# What the backward pass recomputes instead of keeping; fastest first.
RECOMPUTE_MODES = ("none", "mlp", "layer")


@dataclass
class EvalOptions:
    """How voice quality is evaluated, defined once: the probe-set protocol (what is rendered and scored), how
    often training evaluates and what that may cost, and how the best checkpoint and early stopping are
    decided.

    ``voicetune train`` takes every field as ``--eval-<field>`` (early stopping and the WER guard keep their
    own names); ``voicetune evaluate`` takes the protocol fields (:attr:`PROTOCOL`). In YAML: the ``eval:``
    section.
    """

    FLAG_PREFIX: ClassVar[str] = "eval_"
    PROTOCOL: ClassVar[tuple[str, ...]] = ("max_sentences", "probes", "num_references", "seed", "seeds",
                                           "asr_model", "intrusive")

    every: int = opt(0, "Evaluate voice quality every N optimizer steps (0: use --eval-every-epochs).", low=0)
    every_epochs: int = opt(
        1, "Evaluate at the end of every N epochs (when --eval-every is 0). With both 0, no in-loop "
        "evaluation (no baseline, no best checkpoint, no early stopping).", low=0, basic=True)
    max_overhead: float = opt(
        0.15, "Skip scheduled evaluations that would make evaluation take more than this fraction of the "
        "wall time (measured as training goes; 0: never skip). The last step is always evaluated.", low=0.0)
    max_sentences: int = opt(
        4, "Eval-split sentences (with their real recordings) in every evaluation.", low=0)
    probes: int = opt(
        4, "Fixed probe sentences of the language in every evaluation (4 covers short, numbers/names, "
        "question and long).", low=0)
    num_references: int = opt(
        3, "Reference clips (longest of the train split) that condition synthesis.", low=1)
    seed: int = opt(0, "First sampling seed of the evaluation renders (same inputs, same seeds at every "
                    "step).",
                    low=0, high=2**32 - 1)
    seeds: int = opt(
        2, "Renders of every sentence, with sampling seeds --eval-seed, --eval-seed + 1, ...: the 95-percent "
        "intervals of every score resample sentences with their seeds (evaluation/stats.py).", low=1, high=16)
    asr_model: str = opt("auto", "ASR model of the WER round trip (same meaning as in prepare).")
    intrusive: bool = opt(True, "Also MCD/PESQ/STOI against the real recordings of the eval-split sentences.")
    weight_similarity: float = opt(
        1.0, "Composite score weight of the speaker-similarity gain (as a share of the gap between the base "
        "model and the real recordings).", low=0.0)
    weight_wer: float = opt(2.0, "Composite score weight of the WER change (lower is better).", low=0.0)
    weight_cer: float = opt(
        0.0, "Composite score weight of the CER change (use it instead of WER for zh/ja).", low=0.0)
    weight_mos: float = opt(
        0.5, "Composite score weight of the predicted-MOS change (per MOS point).", low=0.0)
    weight_failures: float = opt(
        1.0, "Composite score weight of the change in the share of sentences flagged as failures (runaway, "
        "too short, near silence, repetition).", low=0.0)
    early_stop_patience: int = opt(
        3, "Stop when the composite score has not improved for this many evaluations (0: never stop early).",
        low=0, flag="early_stop_patience")
    early_stop_min_delta: float = opt(
        0.01, "A composite-score improvement must exceed this to count.",
        low=0.0, flag="early_stop_min_delta")
    wer_guard: str = opt(
        "stop", "When an evaluation's WER exceeds the base model's by more than --wer-guard-margin: stop "
        "training, warn, or do nothing (off).", choices=("stop", "warn", "off"), flag="wer_guard")
    wer_guard_margin: float = opt(
        0.10, "WER rise over the base model that trips the WER guard (0.10 = 10 points).",
        low=0.0, flag="wer_guard_margin")
    similarity_guard: bool = opt(
        True, "Never choose as best a checkpoint whose speaker similarity is significantly below the base "
        "model's (the 95-percent paired interval of the change lies below 0).", flag="similarity_guard")
    per_speaker: bool = opt(
        True, "With a multi-speaker dataset, `voicetune evaluate` also scores every speaker separately (its "
        "own references, held-out clips and baseline) and says which voices the finetune improves or "
        "degrades.")
    overfit_evals: int = opt(
        3, "Warn of overfitting when, at this many consecutive evaluations, the validation loss on the eval "
        "split rose while the training loss fell (0: no warning).", low=0)

    def __post_init__(self) -> None:
        check_fields(self)
        _check(self.max_overhead < 1.0, "eval_max_overhead must lie in [0, 1); fix --eval-max-overhead")
        _check(self.max_sentences + self.probes >= 1,
               "an evaluation needs sentences: set --eval-max-sentences or --eval-probes >= 1")

    @property
    def in_loop(self) -> bool:
        """Whether training evaluates at all (--eval-every or --eval-every-epochs)."""
        return bool(self.every or self.every_epochs)


@dataclass
class BackendOptions:
    """The options of one backend (its own fields, docs and checks): each backend subclasses this in
    ``backends/<name>/options.py`` and names the subclass in its registry entry.

    This base has no fields. ``TrainConfig()`` built without the registry holds it as a placeholder meaning
    "the backend's defaults"; :func:`voicetune.backends.registry.train_config` and YAML loading resolve it to
    the backend's own class. Flags of a backend's options are ``--<field>`` (no prefix); in YAML they go under
    the backend's name.
    """

    FLAG_PREFIX: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_fields(self)

    def validate(self, cfg: TrainConfig) -> None:
        """Checks that involve the generic fields too (called by TrainConfig); default: none."""

    @classmethod
    def generic_defaults(cls) -> dict[str, Any]:
        """The backend's own defaults of generic TrainConfig fields, by flat name (e.g. a schedule or a
        gradient clip that its upstream recipe uses): a config made for this backend starts from them instead
        of the generic defaults, wherever it does not set the field itself (see :func:`merge`). Default:
        none."""
        return {}

    @classmethod
    def help_notes(cls) -> str:
        """Text printed as it is (lines of at most 110 columns) under
        ``voicetune train --backend NAME --help``'s description, e.g. the upstream recipe its defaults
        follow; default: none."""
        return ""

    def recompute_modes(self) -> tuple[str, ...]:
        """The recomputation modes (:data:`RECOMPUTE_MODES`) this backend can apply, fastest first."""
        return ("none",)

    def recompute(self) -> str:
        """The backend-specific part of the recomputation mode these options select (e.g. "mlp"); "none"."""
        return "none"

    def with_recompute(self, mode: str) -> BackendOptions:
        """A copy whose backend-specific recomputation fields select ``mode`` ("layer" is TrainConfig's)."""
        return self

    @classmethod
    def of(cls: type[B], cfg: TrainConfig) -> B:  # noqa: PYI019 - typing.Self needs Python 3.11
        """This backend's options in ``cfg``: its own, or the defaults where ``cfg`` holds the placeholder."""
        options = cfg.backend_options
        if isinstance(options, cls):
            return options
        if type(options) is BackendOptions:
            return cls()
        raise ConfigError(f"the config holds options of another backend ({type(options).__name__}); set "
                          f"--backend")


def group_meta(help: str, *, resumable: bool = False) -> dict[str, Any]:
    """The metadata of a TrainConfig field that holds a group of options (a dataclass of its own)."""
    return {"help": help, "group": True, "cli": False, "resumable": resumable}


@dataclass
class TrainConfig:
    """Settings of `voicetune train`: the generic training fields, the ``eval`` group and
    ``backend_options``."""

    backend: str = opt("xtts", "Model backend (one of the registered backends).", basic=True)
    max_steps: int = opt(0, "Stop after this many optimizer steps (0: use --epochs).", low=0, high=10**7,
                         basic=True, resumable=True)
    epochs: int = opt(
        10, "Passes over the training split (used when --max-steps is 0).", basic=True, resumable=True, low=0,
        high=100_000)
    batch_size: int = opt(2, "Clips per micro-batch.", low=1, high=4096, basic=True)
    grad_accum: int = opt(1, "Micro-batches accumulated per optimizer step (effective batch = batch_size x "
                          "grad_accum).", low=1, basic=True, high=4096)
    lr: float = opt(5e-6, "Peak learning rate (the Coqui XTTS recipe uses 5e-6).", low=0.0, high=1.0,
                    basic=True)
    weight_decay: float = opt(
        1e-2, "Weight decay (decoupled for AdamW; applied to weight matrices only).", low=0.0, high=1.0)
    # opt() gives each instance its own copy of a list default (a default_factory): RUF009 does not apply
    betas: list[float] = opt([0.9, 0.96], "AdamW betas.", item=float)  # noqa: RUF009
    warmup_steps: int = opt(0, "Linear learning-rate warm-up steps.", low=0, high=10**7)
    grad_clip: float = opt(1.0, "Clip the global gradient norm to this value (0 disables).", low=0.0)
    precision: str = opt(
        "auto", "auto: bf16 autocast on CUDA GPUs that support it, fp32 on CPU. fp16: autocast with dynamic "
        "loss scaling (GPUs without bf16); fp32: no autocast.",
        choices=("auto", "bf16", "fp16", "fp32"), basic=True)
    save_every: int = opt(
        0, "Write a checkpoint every N optimizer steps (0: only at the end).",
        low=0, basic=True, resumable=True, high=10**7)
    keep_last: int = opt(3, "Keep this many most recent step checkpoints on disk.", low=1, resumable=True,
                         high=100_000)
    log_every: int = opt(1, "Log losses every N optimizer steps.", low=1, resumable=True)
    console_every: int = opt(
        10, "Print a training line to the console every N optimizer steps (and at the first and last step; "
        "the progress bar shows every step). metrics.jsonl, TensorBoard and train.log follow --log-every.",
        low=1, resumable=True)
    seed: int = opt(1, "Seed for data order and initialisation.", low=0, high=2**32 - 1, basic=True)
    device: str = opt("auto", "auto, cpu or cuda (or cuda:N).", basic=True, resumable=True)
    # Speed and memory (benchmarks/README.md has the measurements behind the defaults).
    compile: str = opt(
        "auto", "torch.compile the training loss: auto (on CUDA GPUs with Triton), on, off. The first step "
        "of each padded length compiles (about a minute); later steps reuse it.",
        choices=("auto", "on", "off"), resumable=True)
    compile_mode: str = opt(
        "default", "torch.compile mode; reduce-overhead adds CUDA graphs (fewer launches, more memory).",
        choices=("default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune"), resumable=True)
    compile_cache: bool = opt(
        True, "Keep what torch.compile built in voicetune's cache folder ($VOICETUNE_CACHE_DIR, else "
        "~/.cache/voicetune) and load it in later runs, so a model compiles once per machine, not once per "
        "run.", resumable=True)
    cuda_graphs: str = opt(
        "auto", "Capture each micro-batch's forward + backward in a CUDA graph and replay it (one launch "
        "instead of ~1,800): auto (on a CUDA GPU with --param-dtype bf16 and a compile mode without its own "
        "graphs), on, off. One graph per padded length, captured the first time it starts a step.",
        choices=("auto", "on", "off"))
    gradient_checkpointing: bool = opt(
        False, "Recompute each transformer layer's activations in the backward pass (less memory, ~30% "
        "slower).", resumable=True)
    param_dtype: str = opt(
        "fp32", "Dtype of the trained weights and gradients. bf16 halves their memory; the optimizer then "
        "keeps the updates exact on average by stochastic rounding (needs --precision bf16 or auto on a "
        "GPU).", choices=("fp32", "bf16"))
    optimizer_state_dtype: str = opt(
        "fp32", "Dtype of AdamW's moment estimates (bf16: stochastically rounded, half the memory; needs "
        "--param-dtype bf16).", choices=("fp32", "bf16"))
    # Optimizer, schedule, what trains, data, robustness and observability (voicetune.training).
    optimizer: str = opt(
        "adamw", "Optimizer: adamw (decoupled weight decay), adam, sgd (with --momentum) or rmsprop (with "
        "--momentum); fused or foreach kernels where available.", choices=("adamw", "adam", "sgd", "rmsprop"))
    momentum: float = opt(0.9, "Momentum of --optimizer sgd and rmsprop.", low=0.0)
    scheduler: str = opt(
        "constant", "Learning-rate schedule after the --warmup-steps: constant; cosine (down to lr x "
        "--min-lr-ratio at the last step); cosine_restarts (warm restarts every --restart-steps); linear "
        "(down to lr x --min-lr-ratio); step (x --lr-gamma every --step-size steps); multistep (x --lr-gamma "
        "after each of --milestones); exponential (x --lr-gamma every step).",
        choices=("constant", "cosine", "cosine_restarts", "linear", "step", "multistep", "exponential"))
    min_lr_ratio: float = opt(
        0.0, "Floor of the cosine, cosine_restarts and linear schedules, as a fraction of --lr.",
        low=0.0, high=1.0)
    restart_steps: int = opt(
        0, "Length of the first cosine_restarts period in steps (0: a quarter of the run).", low=0)
    restart_mult: int = opt(
        1, "Each cosine_restarts period is this many times as long as the previous one.", low=1)
    step_size: int = opt(0, "Steps between the LR drops of --scheduler step (0: a third of the run).", low=0)
    milestones: list[int] = opt(  # noqa: RUF009 (a default_factory, as betas)
        [], "When --scheduler multistep multiplies the LR by --lr-gamma: after these steps, or "
        "epochs with --milestone-unit epochs.", item=int, low=1)
    milestone_unit: str = opt(
        "steps", "What --milestones count: optimizer steps, or epochs (each milestone is then that many "
        "epochs of steps, as ai-voice-cloning converts its epoch schedule).", choices=("steps", "epochs"))
    lr_gamma: float = opt(0.5, "LR factor of the step, multistep and exponential schedules.")
    finetune: str = opt(
        "full", "What trains: full (every weight of the trainable model not in the backend's --freeze) or "
        "lora (low-rank adapters, --lora-*; checkpoints hold only the adapters, export merges them into the "
        "weights).", choices=("full", "lora"), basic=True)
    lora_rank: int = opt(16, "LoRA rank.", low=1)
    lora_alpha: float = opt(32.0, "LoRA alpha (the adapter update is scaled by alpha / rank).")
    lora_dropout: float = opt(0.05, "Dropout on the LoRA adapters' input.", low=0.0)
    max_audio_seconds: float = opt(
        0.0, "Drop training clips longer than this (0: the model's limit, 11.6 s for XTTS-v2); the log and "
        "run.json count the clips dropped and why.", low=0.0)
    max_text_tokens: int = opt(
        0, "Drop training clips with more transcript tokens (0: the model's limit, 200 for XTTS).", low=0)
    bucket_window: int = opt(
        16, "Length-bucketed batching: within windows of this many steps of each shuffled epoch, clips are "
        "sorted by length, so a micro-batch holds clips of similar length (less padding). 0 or 1: plain "
        "shuffling.", low=0)
    auto: bool = opt(
        False, "Before training, measure peak GPU memory over a few steps at growing batch sizes (as "
        "`voicetune doctor --dataset` does) and set --batch-size, --grad-accum, --precision and the "
        "recomputation the backend offers (e.g. --checkpoint-mlp, then --gradient-checkpointing, when two "
        "clips do not fit) for this GPU, keeping the effective batch (batch_size x grad_accum). On a CPU: "
        "CPU settings.", basic=True, resumable=True)
    mem_every: int = opt(
        50, "Log a parseable memory line every N steps ([mem] step=N alloc_gib=.. peak_gib=.. "
        "reserved_gib=..; rss_gib on CPU); 0: never.", low=0, resumable=True)
    eval: EvalOptions = field(default_factory=EvalOptions, metadata=group_meta(
        "In-loop evaluation, the evaluation protocol and checkpoint selection.", resumable=True))
    backend_options: BackendOptions = field(default_factory=BackendOptions,
                                            metadata=group_meta("The backend's own options."))

    def __post_init__(self) -> None:
        check_fields(self)
        _check(self.epochs >= 1 or self.max_steps > 0, "set --epochs >= 1 or --max-steps > 0")
        _check(self.lr > 0, "lr must be a positive number; fix --lr")
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "betas must be two numbers in [0, 1)",
        )
        _check(
            self.param_dtype == "fp32" or self.precision != "fp32",
            "param_dtype bf16 trains under bf16 autocast; set --precision auto or bf16 "
            "(or --param-dtype fp32)",
        )
        _check(self.optimizer_state_dtype == "fp32" or self.param_dtype == "bf16",
               "optimizer_state_dtype bf16 needs --param-dtype bf16")
        _check(
            self.cuda_graphs != "on" or self.param_dtype == "bf16",
            "cuda_graphs on needs gradients in fixed buffers: set --param-dtype bf16 "
            "(or --cuda-graphs auto/off)",
        )
        _check(
            self.cuda_graphs != "on" or self.compile_mode not in ("reduce-overhead", "max-autotune"),
            f"--compile-mode {self.compile_mode} captures its own CUDA graphs; "
            "use --compile-mode default with --cuda-graphs on (or --cuda-graphs off)",
        )
        _check(self.cuda_graphs != "on" or not self.gradient_checkpointing,
               "cuda_graphs on cannot capture gradient checkpointing (it saves and restores the RNG state); "
               "drop --gradient-checkpointing or set --cuda-graphs auto/off")
        self._check_training()
        if type(self.backend_options) is not BackendOptions:  # resolved: the backend's own cross-checks
            _check(not self.gradient_checkpointing or "layer" in self.backend_options.recompute_modes(),
                   f"the {self.backend} backend cannot recompute whole layers; drop --gradient-checkpointing")
            self.backend_options.validate(self)

    @property
    def recompute(self) -> str:
        """What the backward pass recomputes (one of :data:`RECOMPUTE_MODES`): --gradient-checkpointing whole
        layers, else what the backend's options select (XTTS: --checkpoint-mlp, each layer's MLP)."""
        return "layer" if self.gradient_checkpointing else self.backend_options.recompute()

    def _check_training(self) -> None:
        """Optimizer, schedule, what trains, data and observability options (voicetune.training)."""
        _check(self.momentum < 1.0, "momentum must lie in [0, 1); fix --momentum")
        _check(0.0 < self.lr_gamma <= 1.0, "lr_gamma must lie in (0, 1]; fix --lr-gamma")
        _check(all(float(m) >= 1 and float(m) == int(m) for m in self.milestones),
               f"milestones must be whole {self.milestone_unit} numbers >= 1; fix --milestones")
        _check(
            self.scheduler != "multistep" or bool(self.milestones), "--scheduler multistep needs --milestones"
        )
        _check(self.lora_alpha > 0, "lora_alpha must be > 0; fix --lora-alpha")
        _check(self.lora_dropout < 1.0, "lora_dropout must lie in [0, 1); fix --lora-dropout")
        _check(
            self.param_dtype == "fp32" or self.precision != "fp16",
            "param_dtype bf16 cannot train under --precision fp16; use --precision bf16 "
            "(or --param-dtype fp32)",
        )
        _check(self.param_dtype == "fp32" or self.optimizer == "adamw",
               "param_dtype bf16 has its own AdamW; use --optimizer adamw (or --param-dtype fp32)")


def with_recompute(cfg: TrainConfig, mode: str) -> TrainConfig:
    """``cfg`` set to recompute ``mode`` (one of :data:`RECOMPUTE_MODES`) in the backward pass."""
    if mode not in RECOMPUTE_MODES:
        raise ValueError(f"recomputation mode must be one of {RECOMPUTE_MODES}, not {mode!r}")
    return dataclasses.replace(cfg, gradient_checkpointing=mode == "layer",
                               backend_options=cfg.backend_options.with_recompute(mode))


_CONFIGS = {"prepare": PrepareConfig, "train": TrainConfig}

OptionsFor = Callable[[str], type[BackendOptions]]
"""The options class of a backend name (the backend registry's ``options_class``)."""

_LOGGED: set[tuple[str, tuple[str, ...]]] = set()  # config files whose earlier layout was logged

REMOVED_OPTIONS = {"num_workers": "features are read from the run's in-memory cache; no worker processes"}
"""Options of earlier versions that no longer exist: an old config.yaml holding them still loads (logged)."""


# ------------------------------------------------------------------------------------------------ I/O


@dataclass(frozen=True)
class OptionField:
    """One option of a config class: its flat name (flag without dashes), where it lives and its
    declaration."""

    flat: str
    group: str  # "" (a top-level field), "eval", or "backend_options"
    field: dataclasses.Field[Any]
    owner: type  # the dataclass that declares it

    @property
    def flag(self) -> str:
        return "--" + self.flat.replace("_", "-")


def option_fields(cls: type, options: type[BackendOptions] | None = None) -> dict[str, OptionField]:
    """Every option of ``cls`` by flat name, groups included (``options``: the backend options class to
    use)."""
    out: dict[str, OptionField] = {}
    for f in dataclasses.fields(cls):
        if not f.metadata.get("group"):
            out[f.name] = OptionField(f.name, "", f, cls)
            continue
        # (type: ignore: mypy cannot narrow default_factory from MISSING; a group field always has one)
        sub = options if f.name == "backend_options" and options is not None else f.default_factory()  # type: ignore[operator]
        sub = sub if isinstance(sub, type) else type(sub)
        for g in dataclasses.fields(sub):
            name = flat_name(sub, g)
            if name in out:
                raise ConfigError(f"{sub.__name__}.{g.name}: its flag {name!r} is already an option of "
                                  f"{cls.__name__}")
            out[name] = OptionField(name, f.name, g, sub)
    return out


def resumable_options(cfg: TrainConfig) -> set[str]:
    """Flat names of the options a resumed run may change (``resumable`` in opt(), or in a resumable
    group)."""
    groups = {f.name: f.metadata.get("resumable", False) for f in dataclasses.fields(cfg)}
    return {name for name, o in option_fields(TrainConfig, type(cfg.backend_options)).items()
            if o.field.metadata.get("resumable") or groups.get(o.group)}


def flatten(cfg: Any) -> dict[str, Any]:
    """Every option of ``cfg`` by flat name (groups included)."""
    if not isinstance(cfg, TrainConfig):
        return dataclasses.asdict(cfg)
    out = {}
    for name, o in option_fields(TrainConfig, type(cfg.backend_options)).items():
        holder = getattr(cfg, o.group) if o.group else cfg
        out[name] = getattr(holder, o.field.name)
    return out


def _unknown(keys: list[str], known: list[str], source: str) -> ConfigError:
    hints = [f"{k!r} (did you mean {m[0]!r}?)" for k in keys for m in [difflib.get_close_matches(k, known,
                                                                                                 1)] if m]
    return ConfigError(f"{source}: unknown option(s) {keys}{'; ' + ', '.join(hints) if hints else ''}; "
                       f"valid options are {sorted(known)}")


def _build(cls: type[T], kwargs: dict[str, Any], source: str) -> T:
    hints = typing.get_type_hints(cls)
    items = {f.name: f.metadata.get("item") for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    coerced = {}
    for k, v in kwargs.items():
        try:
            coerced[k] = coerce(v, hints[k], f"{source}: {k}", items.get(k))
        except ConfigError as e:
            fix = "" if dataclasses.is_dataclass(hints[k]) else f"; fix {flag_of(cls, k)}"
            raise ConfigError(f"{e}{fix}") from None
    try:
        return cls(**coerced)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def from_dict(cls: type[T], data: dict[str, Any], *, source: str = "config",
              options_for: OptionsFor | None = None) -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys and wrongly typed values.

    A TrainConfig mapping is the YAML layout of the module doc (an ``eval:`` section and one under the
    backend's name), or flat (every option by its flat name: config files of earlier versions).
    ``options_for`` gives the backend's options class; without it a mapping that sets backend options is an
    error.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of options, got {type(data).__name__}")
    if cls is not TrainConfig:
        known = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise _unknown(unknown, known, source)
        return _build(cls, data, source)
    return _train_from_dict(data, source, options_for)  # type: ignore[return-value]


def _options_class(backend: Any, options_for: OptionsFor | None, source: str) -> type[BackendOptions]:
    if not isinstance(backend, str):
        raise ConfigError(f"{source}: backend must be of type str, got {backend!r}")
    if options_for is None:
        return BackendOptions
    try:
        return options_for(backend)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def _train_from_dict(data: dict[str, Any], source: str, options_for: OptionsFor | None) -> TrainConfig:
    backend = data.get("backend", TrainConfig.backend)
    options = _options_class(backend, options_for, source)
    fields = option_fields(TrainConfig, options)
    top = {f.name for f in dataclasses.fields(TrainConfig) if not f.metadata.get("group")}
    parts: dict[str, dict[str, Any]] = {"": {}, "eval": {}, "backend_options": {}}
    flat_keys, removed, unknown = [], [], []
    for key, value in data.items():
        section = "eval" if key == "eval" else "backend_options" if key == backend else None
        if section is not None:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key} must be a mapping of options, got {value!r}")
            known = {
                f.name for f in dataclasses.fields(options if section == "backend_options" else EvalOptions)
            }
            bad = sorted(set(value) - known)
            if bad:
                raise _unknown([f"{key}.{k}" for k in bad], [f"{key}.{k}" for k in known], source)
            parts[section].update(value)
        elif key in top:
            parts[""][key] = value
        elif key in fields:  # a flat name of a group's option (earlier versions wrote every option flat)
            parts[fields[key].group][fields[key].field.name] = value
            flat_keys.append(key)
        elif key in REMOVED_OPTIONS:
            removed.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise _unknown(sorted(unknown), sorted(fields), source)
    for key, value in _generic_defaults(options).items():  # the backend's defaults where the file is silent
        parts[""].setdefault(key, value)
    if parts["backend_options"] and options is BackendOptions:
        raise ConfigError(f"{source}: the {backend} backend's options need the backend registry "
                          "(voicetune.backends.registry.load_train_config)")
    # once per file per process (it is read twice)
    if flat_keys and (source, tuple(flat_keys)) not in _LOGGED:
        _LOGGED.add((source, tuple(flat_keys)))
        logger.info("%s: options of an earlier config layout (%s) were read into their eval: and %s: "
                    "sections; "
                    "voicetune writes the new layout", source, ", ".join(sorted(flat_keys)), backend)
    for key in removed:
        logger.info("%s: option %s is no longer used (%s); ignored", source, key, REMOVED_OPTIONS[key])
    return _build(TrainConfig, {**parts[""], "eval": _build(EvalOptions, parts["eval"], source),
                                "backend_options": _build(options, parts["backend_options"], source)}, source)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config as the mapping YAML holds (a TrainConfig in the layout of the module doc)."""
    if not isinstance(cfg, TrainConfig):
        return dataclasses.asdict(cfg)
    out = {
        f.name: dataclasses.asdict(cfg)[f.name]
        for f in dataclasses.fields(cfg)
        if not f.metadata.get("group")
    }
    out["eval"] = dataclasses.asdict(cfg.eval)
    if dataclasses.fields(cfg.backend_options):
        out[cfg.backend] = dataclasses.asdict(cfg.backend_options)
    return out


def load_yaml(cls: type[T], path: Path, options_for: OptionsFor | None = None) -> T:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read config {path}: not a YAML text file (not UTF-8)") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    return from_dict(cls, data, source=str(path), options_for=options_for)


def save_yaml(cfg: Any, path: Path) -> None:
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


def generic_default(name: str, options: type[BackendOptions] = BackendOptions) -> Any:
    """The default of TrainConfig's top-level field ``name`` for a backend with ``options``: its own
    (:meth:`BackendOptions.generic_defaults`), else the field's."""
    own = options.generic_defaults()
    if name in own:
        return own[name]
    f = next(f for f in dataclasses.fields(TrainConfig) if f.name == name)
    # (type: ignore: mypy cannot narrow default_factory from MISSING; a field without a default has one)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]


def _generic_defaults(options: type[BackendOptions]) -> dict[str, Any]:
    defaults = options.generic_defaults()
    top = {f.name for f in dataclasses.fields(TrainConfig) if not f.metadata.get("group")}
    bad = sorted(set(defaults) - top)
    if bad:
        raise TypeError(f"{options.__name__}.generic_defaults: {bad} are not generic TrainConfig fields")
    return defaults


def _switched_defaults(flat: dict[str, Any], old: type[BackendOptions],
                       new: type[BackendOptions]) -> dict[str, Any]:
    """The generic fields that move from ``old``'s defaults to ``new``'s (a field ``flat`` holds at any other
    value was chosen: it stays)."""
    names = set(_generic_defaults(old)) | set(_generic_defaults(new))
    return {n: generic_default(n, new) for n in names if flat.get(n) == generic_default(n, old)}


def merge(cfg: T, overrides: dict[str, Any], options_for: OptionsFor | None = None) -> T:
    """Return a copy of ``cfg`` with the non-None ``overrides`` (by flat name) applied and validated.

    For a TrainConfig, a changed ``backend`` (or the placeholder options of ``TrainConfig()``) starts from
    that backend's default options (``options_for``), and each generic field that ``cfg`` holds at the
    previous backend's default takes the new backend's default (:meth:`BackendOptions.generic_defaults`)
    before the overrides apply.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not isinstance(cfg, TrainConfig):
        return from_dict(type(cfg), {**to_dict(cfg), **overrides}, source="options")
    backend = overrides.get("backend", cfg.backend)
    resolved = type(cfg.backend_options) is not BackendOptions and backend == cfg.backend
    options = type(cfg.backend_options) if resolved else _options_class(backend, options_for, "options")
    before = option_fields(TrainConfig, type(cfg.backend_options))
    flat = {k: v for k, v in flatten(cfg).items() if resolved or before[k].group != "backend_options"}
    if not resolved:
        flat.update(_switched_defaults(flat, type(cfg.backend_options), options))
    flat.update(overrides)
    fields = option_fields(TrainConfig, options)
    unknown = sorted(set(flat) - set(fields))
    if unknown:
        raise _unknown(unknown, sorted(fields), "options")
    parts: dict[str, dict[str, Any]] = {"": {}, "eval": {}, "backend_options": {}}
    for name, value in flat.items():
        parts[fields[name].group][fields[name].field.name] = value
    return _build(TrainConfig, {**parts[""], "eval": _build(EvalOptions, parts["eval"], "options"),
                                # type: ignore[return-value]
                                "backend_options": _build(options, parts["backend_options"], "options")},
                                "options")
