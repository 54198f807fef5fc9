"""`voicetune` command line: parse arguments, call the library, print results. Nothing else lives here."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import errno
import json
import logging
import re
import sys
import textwrap
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voicetune import __version__
from voicetune.config import (
    ConfigError,
    EvalOptions,
    OptionField,
    PrepareConfig,
    TrainConfig,
    option_fields,
)
from voicetune.utils.disk import DiskFullError

logger = logging.getLogger("voicetune")

FORCE_HELP = ("write into a non-empty --out folder that voicetune did not write; its files are kept (never "
              "deleted or replaced), the output is added next to them")

EPILOG = """\
typical use:
  voicetune doctor --base xtts_v2/                 # check disk, RAM, GPU and the base model folder
  voicetune prepare recordings/ --out dataset/     # cut, transcribe and check your recordings
  voicetune train dataset/ --base xtts_v2/ --out run/
  voicetune evaluate run/                          # base vs finetuned: similarity, WER, MOS, ...
  voicetune export run/ --out my_voice/
  voicetune synthesize my_voice/ --text "Hello there." --out hello.wav
  voicetune demo                                   # all of the above on generated recordings
  voicetune ui --workspace my_workspace/           # the same in a web browser (http://127.0.0.1:7860)
"""


class _Parser(argparse.ArgumentParser):
    """argparse that suggests the closest flag for an unknown one ("did you mean --batch-size?")."""

    def error(self, message: str) -> typing.NoReturn:
        unknown = re.findall(r"(--?[\w-]+)", message.partition("unrecognized arguments:")[2])
        hints = _suggestions(self, unknown)
        super().error(message + (f" (did you mean {', '.join(hints)}?)" if hints else ""))


def _suggestions(parser: argparse.ArgumentParser, unknown: list[str]) -> list[str]:
    known = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    matches = (difflib.get_close_matches(flag.split("=")[0], known, 1, 0.6) for flag in unknown)
    return [m[0] for m in matches if m]


def _value_kwargs(o: OptionField, hints: dict[str, Any], full: bool, choices: Any = None,
                  defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """argparse keyword arguments of one option: type (or a --x/--no-x pair), choices, help (``defaults``: the
    backend's own defaults of generic options, shown instead of the generic ones)."""
    f = o.field
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if defaults and o.group == "" and o.flat in defaults:
        default = defaults[o.flat]
    text = f"{f.metadata.get('help', '')} (default: {default})"
    kwargs: dict[str, Any] = {"default": None, "dest": o.flat,
                              "help": text if full or f.metadata.get("basic") else argparse.SUPPRESS}
    tp = typing.get_origin(hints[f.name]) or hints[f.name]
    if tp is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif tp is list:
        kwargs.update(nargs="+", type=float, metavar="X")
    else:
        kwargs["type"] = tp
        choices = choices or f.metadata.get("choices")
        if choices:
            kwargs["choices"] = choices
    return kwargs


def _add_options(group: Any, options: list[OptionField], full: bool = True, aliases: bool = False,
                 choices: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None) -> None:
    """One flag per option, its help taken from the field's documentation (hidden unless basic or ``full``).
    ``aliases``: also accept the bare field name (``--max-sentences`` for ``--eval-max-sentences``)."""
    for o in options:
        if not o.field.metadata.get("cli", True):
            continue
        alias = "--" + o.field.name.replace("_", "-")
        flags = [o.flag] + ([alias] if aliases and o.field.name != o.flat else [])
        hints = typing.get_type_hints(o.owner)
        group.add_argument(*flags, **_value_kwargs(o, hints, full, (choices or {}).get(o.flat), defaults))


def _overrides(args: argparse.Namespace, names: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def _backend_of(argv: list[str]) -> str:
    """The backend a command line trains (its options become flags): --backend, else a --resume run's."""
    for i, a in enumerate(argv):
        if a == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--backend="):
            return a.split("=", 1)[1]
    for i, a in enumerate(argv):
        run = argv[i + 1] if a == "--resume" and i + 1 < len(argv) else a.split("=", 1)[1] \
            if a.startswith("--resume=") else None
        if run:
            try:
                return str(json.loads((Path(run) / "run.json").read_text())["backend"])
            except (OSError, ValueError, KeyError):
                break
    return TrainConfig.backend


def _config_with_overrides(args: argparse.Namespace, cls: type) -> Any:
    """The dataclass config from ``--config`` (YAML) when given, with the command-line options on top."""
    from voicetune.config import load_yaml, merge

    cfg = load_yaml(cls, Path(args.config)) if getattr(args, "config", None) else cls()
    return merge(cfg, _overrides(args, {f.name for f in dataclasses.fields(cls)}))


# What the library's progress callbacks count, by the first word of their stage (the text before ": ").
PROGRESS_UNITS = {"prepare": "audio-s", "import": "audio-s", "eval": "sentence", "train": "step",
                  "features": "clip", "speaking": "sentence"}


def _progress_bar() -> Callable[[float, float, str], None]:
    """One tqdm bar at a time, driven by the library's progress callbacks ``(done, total, what)``.

    ``what`` is "STAGE: DETAIL" (or just a stage). A new bar starts when the stage or the total changes or the
    count goes back; its unit comes from :data:`PROGRESS_UNITS`, so rates and the ETA read in audio seconds,
    sentences or steps. The bar advances by increments, so tqdm's rate and ETA are measured, never guessed.
    """
    from tqdm import tqdm

    state: dict[str, Any] = {"bar": None, "stage": None, "finished": None}

    def update(done: float, total: float, what: str) -> None:
        stage, _, detail = what.partition(": ")
        bar = state["bar"]
        if bar is None and done >= total and state["finished"] == (stage, total):
            return  # a stage's closing message after its bar already reached the end
        if bar is None or state["stage"] != stage or bar.total != total or done < bar.n:
            if bar is not None:
                bar.close()
            unit = PROGRESS_UNITS.get(stage.split(" ")[0], "it")
            counts = "{n:.0f}/{total:.0f}" if unit == "audio-s" else "{n_fmt}/{total_fmt}"
            # training's own ETA (in its status text) includes the evaluations to come; tqdm's would not
            times = ("[{elapsed}, {rate_fmt}{postfix}]" if unit == "step"
                     else "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
            # a stage that resumes part-way (training after an evaluation) starts at its count: rates measure
            # only what this bar sees
            bar_format = "{desc}: {percentage:3.0f}%|{bar}| " + counts + " {unit} " + times
            bar = state["bar"] = tqdm(total=total, initial=done, unit=unit, dynamic_ncols=True, leave=True,
                                      desc=stage, bar_format=bar_format)
            state["stage"] = stage
        if detail:
            bar.set_postfix_str(detail[:90], refresh=False)
        if done > bar.n:
            bar.update(done - bar.n)
        else:
            bar.refresh()
        if done >= total:
            bar.close()
            state["bar"], state["finished"] = None, (stage, total)

    return update


# ---------------------------------------------------------------- subcommands

def cmd_prepare(args: argparse.Namespace) -> int:
    from voicetune.data.prepare import prepare

    cfg = _config_with_overrides(args, PrepareConfig)
    speakers = {}
    for item in args.speaker or []:
        name, sep, folder = item.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise ValueError(f"--speaker {item!r}: expected NAME=FOLDER")
        speakers[name.strip()] = Path(folder)
    result = prepare(args.input_dir, args.out, cfg, progress=_progress_bar(), speakers=speakers or None)
    print(result.summary())
    return 0


def cmd_dataset(args: argparse.Namespace) -> int:
    from voicetune.data import curate

    if args.dataset_command == "import":
        from voicetune.data.importer import import_dataset

        result = import_dataset(args.src, args.out, _config_with_overrides(args, PrepareConfig),
                                progress=_progress_bar())
        print(result.summary())
        return 0
    if args.dataset_command == "restore":
        print(curate.restore(args.dataset_dir, args.clip_ids, text=args.text).summary())
    else:
        print(curate.quarantine(args.dataset_dir, args.clip_ids).summary())
    return 0


def cmd_make_tiny_base(args: argparse.Namespace) -> int:
    from voicetune.backends.registry import backend_class
    from voicetune.backends.tiny import make_tiny_base

    out = make_tiny_base(args.backend, Path(args.out), dataset=Path(args.dataset) if args.dataset else None,
                         force=args.force, seed=args.seed)
    print(f"wrote an UNTRAINED tiny random {args.backend} base model to {out}")
    print("It exists for tests and the demo: it cannot produce usable speech. For real use, pass a real base")
    print(f"to --base ({backend_class(args.backend).base_layout}).")
    return 0


def _without_gpus(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--gpus":
            skip = True
        elif not a.startswith("--gpus="):
            out.append(a)
    return out


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from voicetune.training.distributed import env_world, launch

    if args.gpus > 1 and env_world() <= 1:  # re-run this command under torchrun, one process per GPU
        return launch(_without_gpus(list(args.argv)), args.gpus)
    from voicetune.backends.registry import options_class
    from voicetune.finetune import train

    main_rank = os.environ.get("RANK", "0") == "0"
    if not main_rank:  # rank 0 speaks for the job
        logging.getLogger("voicetune").setLevel(logging.WARNING)
    options = option_fields(TrainConfig, options_class(args.backend or TrainConfig.backend))
    run_dir = Path(args.resume or args.out) if (args.resume or args.out) else None
    if main_rank and run_dir is not None and not args.log_file:  # everything, every step, in the run folder
        from voicetune.run import is_marked_run
        from voicetune.utils.log import add_log_file

        # opened once train has marked the folder as its own run (never in a folder it refuses)
        add_log_file(run_dir / "train.log", ready=lambda: is_marked_run(run_dir))
    result = train(args.dataset_dir, args.base, args.out, config_file=args.config, resume=args.resume,
                   progress=_progress_bar() if main_rank else None, **_overrides(args, options))
    if not main_rank:
        return 130 if result.interrupted == "SIGINT" else 143 if result.interrupted else 0
    losses = [h["loss"] for h in result.losses]
    if losses:
        print(f"trained steps {result.resumed_from + 1}-{result.steps} on {result.clips} clips in "
              f"{_duration(result.seconds)} (loss {losses[0]:.3f} → {losses[-1]:.3f})")
    print(f"run folder: {result.run_dir}   last checkpoint: {result.final_checkpoint.name}")
    if result.interrupted:
        print(f"stopped by {result.interrupted}; continue with: voicetune train --resume {result.run_dir}")
        return 130 if result.interrupted == "SIGINT" else 143
    if (result.run_dir / "report.html").is_file():  # in-loop evaluation ran
        from voicetune.evaluation.report import text_report

        print(text_report(result.run_dir))
        print(f"report: {result.run_dir / 'report.html'}")
        print(_verdict_line(result.run_dir))
    print(_next_commands(result.run_dir))
    return 0


def _verdict_line(run_dir: Path) -> str:
    from voicetune.evaluation.report import collect

    said = collect(run_dir).verdict
    return f"verdict: {said.text}" if said else ""


def _duration(seconds: float) -> str:
    from voicetune.training.observe import format_duration

    return format_duration(seconds)


def _next_commands(run_dir: Path) -> str:
    """The commands a user runs after training, with this run's paths."""
    import shlex

    from voicetune.run import best_checkpoint

    run = shlex.quote(str(run_dir))
    package = shlex.quote(str(run_dir.parent / f"{run_dir.name}-voice"))
    best = best_checkpoint(run_dir)
    which = f" --checkpoint best   # {best.name}, the best evaluation" if best else ""
    return "\n".join([
        "next:",
        f"  voicetune evaluate {run}                 # score checkpoints against the base model",
        f"  voicetune export {run} --out {package}{which}",
        f"  voicetune synthesize {package} --text \"Hello, this is my voice.\" --out hello.wav",
    ])


def cmd_evaluate(args: argparse.Namespace) -> int:
    from voicetune.evaluation.rescore import evaluate_base, rescore_run

    protocol = _protocol_options()
    options = {protocol[k].field.name: v for k, v in _overrides(args, protocol).items()}
    device = args.device
    if args.base or args.dataset:
        if not (args.base and args.dataset) or args.run_dir:
            raise ConfigError("score a base model with --base DIR --dataset DIR (and no RUN_DIR)")
        res = evaluate_base(args.base, args.dataset, args.out, backend_name=args.backend,
                            progress=_progress_bar(), device=device, force=args.force, **options)
        print(res.text)
        print(f"metrics: {res.out / 'metrics.json'}")
        return 0
    if not args.run_dir:
        raise ConfigError("give a RUN_DIR to evaluate (or --base DIR --dataset DIR for a base model alone)")
    result = rescore_run(args.run_dir, args.checkpoints or args.checkpoint, progress=_progress_bar(),
                         device=device, **options)
    print(result.text)
    print(f"report: {result.report}")
    print(f"verdict: {result.verdict}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from voicetune.packaging import export, export_check_line, read_package

    out = export(args.run_dir, args.out, checkpoint=args.checkpoint, force=args.force,
                 check=not args.no_check)
    manifest = read_package(out)
    print(f"exported model package: {out}")
    print(f"packaged checkpoint {manifest['checkpoint']} ({manifest['checkpoint_choice']}, "
          f"step {manifest['steps']})")
    print(export_check_line(manifest.get("export_check") or {}))
    return 0


def cmd_synthesize(args: argparse.Namespace) -> int:
    from voicetune.synthesis import synthesize

    wav = synthesize(args.package_dir, args.text, args.out, reference=args.reference, language=args.language,
                     seed=args.seed, force=args.force, preset=args.preset)
    print(f"wrote {args.out} ({wav.duration:.2f} s at {wav.sample_rate} Hz)")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from voicetune.preflight import doctor

    report = doctor(base=Path(args.base) if args.base else None,
                    dataset=Path(args.dataset) if args.dataset else None, backend=args.backend,
                    stack=not args.skip_stack_check)
    if args.json:
        print(json.dumps({**dataclasses.asdict(report), "failed": report.failed}, indent=2, default=str))
        return 1 if report.failed else 0
    print(report.text())
    failed = report.stack.failures if report.stack else []
    if failed and not args.verbose:
        where = args.log_file
        if not where:  # the tracebacks, for a bug report: the console keeps one line per failure
            import tempfile

            fd, where = tempfile.mkstemp(prefix="voicetune-doctor-", suffix=".log")
            with open(fd, "w", encoding="utf-8") as f:
                f.write("\n\n".join(f"{c.component} ({c.what}):\n{c.traceback}" for c in failed))
        print(f"tracebacks of the failed components: {where} (or run `voicetune -v doctor`)")
    return 1 if report.failed else 0


def cmd_ui(args: argparse.Namespace) -> int:
    import os

    from voicetune.ui import launch

    launch(
        args.workspace,
        host=args.host,
        port=args.port,
        auth=args.auth or os.environ.get("VOICETUNE_UI_AUTH"),
        allow_remote=args.allow_remote,
        max_upload_mb=args.max_upload_mb,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from voicetune.demo_pipeline import demo

    if not args.log_file:
        from voicetune.demo_pipeline import MARKER
        from voicetune.utils.log import add_log_file

        marker = Path(args.workdir) / MARKER  # written by demo into a folder it may use
        add_log_file(Path(args.workdir) / "demo.log", ready=marker.is_file)

    result = demo(Path(args.workdir), max_steps=args.max_steps, progress=_progress_bar())
    print(result.summary())
    return 0


# ---------------------------------------------------------------- parser


def _protocol_options() -> dict[str, OptionField]:
    fields = option_fields(TrainConfig)
    return {
        o.flat: o for o in fields.values() if o.owner is EvalOptions and o.field.name in EvalOptions.PROTOCOL
    }


PREPARE_OPTIONS = "prepare options (also settable in the YAML file given to --config)"


def _add_data_commands(sub: Any, fmt: type) -> None:
    prepare_options = list(option_fields(PrepareConfig).values())
    s = sub.add_parser(
        "prepare",
        help="recordings → transcribed, checked, split dataset",
        formatter_class=fmt,
        description="Decode every audio file under INPUT_DIR (wav/flac/mp3/ogg/m4a, any rate, mono or "
        "stereo), cut speech clips with Silero VAD, transcribe them with faster-whisper, normalise "
        "loudness and write a Coqui/AllTalk-format dataset. Input files are never modified.",
    )
    s.add_argument("input_dir", nargs="?", help="folder (or single file) of recordings")
    s.add_argument("--out", required=True, help="dataset folder to write")
    s.add_argument("--speaker", action="append", metavar="NAME=FOLDER",
                   help="another input folder holding speaker NAME (repeatable: one dataset, several voices)")
    s.add_argument("--config", metavar="YAML", help="prepare options from a YAML file (e.g. the prepare.yaml "
                   "of an earlier dataset); command-line options override it")
    _add_options(s.add_argument_group(PREPARE_OPTIONS), prepare_options)
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("dataset", help="curate or import a dataset (restore / quarantine / import)",
                       description="Change a prepared dataset by hand, or import an existing one.")
    dsub = s.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    d = dsub.add_parser("restore", help="keep quarantined clips after listening to them",
                        description="Move quarantined clips back into the dataset (re-runs of prepare keep "
                                    "this).")
    d.add_argument("dataset_dir", help="dataset folder written by `voicetune prepare`")
    d.add_argument("clip_ids", nargs="+", metavar="CLIP_ID",
                   help="clip ids (as in clips.jsonl and report.html)")
    d.add_argument("--text", help="corrected transcript (one clip)")
    d.set_defaults(func=cmd_dataset)
    d = dsub.add_parser("quarantine", help="take clips out of training (they stay on disk)",
                        description="Move clips to quarantine/ (re-runs of prepare keep this).")
    d.add_argument("dataset_dir", help="dataset folder written by `voicetune prepare`")
    d.add_argument("clip_ids", nargs="+", metavar="CLIP_ID",
                   help="clip ids (as in clips.jsonl and report.html)")
    d.set_defaults(func=cmd_dataset)
    d = dsub.add_parser("import", help="LJSpeech or Coqui/AllTalk folder → voicetune dataset (with QA)",
                        formatter_class=fmt)
    d.add_argument("src", help="folder with metadata.csv + wavs/ (LJSpeech) or metadata_train/eval.csv")
    d.add_argument("--out", required=True, help="dataset folder to write")
    d.add_argument("--config", metavar="YAML", help="prepare options from a YAML file; command-line options "
                   "override it")
    _add_options(d.add_argument_group(PREPARE_OPTIONS), prepare_options)
    d.set_defaults(func=cmd_dataset)


class _HelpAll(argparse.Action):
    """--help-all: the command's help with every option described (--help shows the basic ones)."""

    def __init__(self, option_strings: list[str], dest: str, build: Callable[[], argparse.ArgumentParser],
                 **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.build = build

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        self.build().print_help()
        parser.exit()


def _train_parser(sub: Any, fmt: type, backend: str, full: bool) -> argparse.ArgumentParser:
    from voicetune.backends.registry import available_backends, options_class

    options = option_fields(TrainConfig, options_class(backend))
    defaults, notes = options_class(backend).generic_defaults(), options_class(backend).help_notes()
    groups = {
        "": [o for o in options.values() if o.group == "" and not o.field.metadata.get("basic")],
        "eval": [o for o in options.values() if o.group == "eval" and not o.field.metadata.get("basic")],
        "backend_options": [
            o for o in options.values() if o.group == "backend_options" and not o.field.metadata.get("basic")
        ],
    }
    advanced = [o for os_ in groups.values() for o in os_]
    epilog = None
    if not full:
        flags = " ".join(o.flag for o in advanced)
        epilog = f"advanced options ({len(advanced)}; `voicetune train --help-all` describes each one):\n" + \
            "\n".join(textwrap.wrap(flags, 100, initial_indent="  ", subsequent_indent="  ",
                                     break_on_hyphens=False, break_long_words=False))
    s = sub.add_parser("train", help="finetune a base model on a prepared dataset", formatter_class=fmt,
                       epilog=epilog,
                       description="Finetune BASE on DATASET_DIR's train split. Audio codes and conditioning "
                       "inputs are computed once and cached in the run folder; then an explicit "
                       "loop trains the model (fully, with LoRA, or with frozen parts), logging "
                       "losses, LR, throughput, ETA and memory to the console, metrics.jsonl and "
                       "TensorBoard, and writing atomic checkpoints under OUT/checkpoints/; "
                       "voice quality is evaluated against the base model as it trains. Ctrl+C "
                       "or SIGTERM saves and stops; --resume OUT continues exactly; --gpus N "
                       "trains on N GPUs; --auto measures this GPU and picks the batch geometry. "
                       "Options also come from a YAML --config (flags override it). --backend "
                       "NAME --help shows that backend's options."
                       + (f"\n\n{notes}" if notes else ""))
    s.add_argument("--help-all", action=_HelpAll, build=lambda: _standalone(backend, full=True),
                   help="show every option with its description, and exit")
    s.add_argument("dataset_dir", nargs="?", help="prepared dataset folder (not needed with --resume)")
    s.add_argument("--base", help="base model folder (the backend's native layout, or a package from "
                   "`voicetune export`)")
    s.add_argument("--out", help="run folder to create")
    s.add_argument("--config", help="YAML TrainConfig; command-line options override it")
    s.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue RUN_DIR exactly from its latest checkpoint (its "
        "dataset, base and config.yaml; options given here may change its length, checkpointing, logging "
        "and evaluation). Ctrl+C or SIGTERM during training saves a checkpoint to resume from.",
    )
    s.add_argument(
        "--gpus",
        type=int,
        default=1,
        help="train on N GPUs of this machine: re-launches this command "
        "under torchrun (global batch = batch size x grad accum x N). `torchrun --nproc-per-node N -m "
        "voicetune.cli train ...` and `accelerate launch -m voicetune.cli train ...` work too.",
    )
    basic = [o for o in options.values() if o.field.metadata.get("basic")]
    _add_options(s.add_argument_group("basic options (also settable in a YAML --config)"), basic,
                 choices={"backend": available_backends()}, defaults=defaults)
    titles = {"": "advanced: training", "eval": "advanced: evaluation (YAML section eval:)",
              "backend_options": f"advanced: {backend} backend (YAML section {backend}:)"}
    for key, title in titles.items():
        group = s.add_argument_group(title) if full else s
        _add_options(group, groups[key], full=full, defaults=defaults)
    s.set_defaults(func=cmd_train)
    return s


def _standalone(backend: str, full: bool) -> argparse.ArgumentParser:
    """The train subcommand alone, as `voicetune train` (for --help-all)."""
    root = _Parser(prog="voicetune")
    sub = root.add_subparsers(parser_class=_Parser)
    return _train_parser(sub, argparse.RawDescriptionHelpFormatter, backend, full)


def _add_model_commands(sub: Any, fmt: type, backend: str) -> None:
    from voicetune.backends.registry import available_backends

    s = sub.add_parser("make-tiny-base", help="write an UNTRAINED tiny base model (tests/demo only)",
                       description="Write a tiny, randomly initialised base model in the backend's exact "
                       "native layout (XTTS-v2: config.json, model.pth, dvae.pth, mel_stats.pth, vocab.json, "
                       "speakers_xtts.pth; CSM: the Hugging Face folder of sesame/csm-1b, with a Mimi codec "
                       "whose codebooks are fitted to speech) with a locally trained vocabulary. It cannot "
                       "speak: it exists so the whole pipeline can be exercised without downloading real "
                       "weights.")
    s.add_argument("--backend", default=TrainConfig.backend, choices=available_backends(),
                   help="model backend (default: %(default)s)")
    s.add_argument("--out", required=True, help="folder to write")
    s.add_argument("--dataset",
                   help="optional dataset folder: its transcripts train the vocabulary and its audio "
                   "gives the audio statistics")
    s.add_argument("--seed", type=int, default=0, help="seed of the random weights (same seed, same model)")
    s.add_argument("--force", action="store_true", help=FORCE_HELP)
    s.set_defaults(func=cmd_make_tiny_base)
    _train_parser(sub, fmt, backend, full=False)


def _add_result_commands(sub: Any, fmt: type) -> None:
    from voicetune.backends.registry import available_backends

    s = sub.add_parser(
        "evaluate",
        help="score checkpoints (or a base model) against the base model",
        formatter_class=fmt,
        description="Render the run's probe set (eval-split sentences with their recordings, plus "
        "fixed probe sentences) with checkpoints of RUN_DIR, score speaker similarity, ASR "
        "round-trip WER/CER, predicted MOS, MCD/PESQ/STOI and failure flags against the base "
        "model's baseline, compute the validation losses (teacher-forced on the eval split) of the base "
        "model and each checkpoint, re-decide checkpoints/best and rewrite RUN_DIR/report.html. "
        "A multi-speaker dataset also gets every speaker scored and judged on its own "
        "(eval.per_speaker). "
        "With --base DIR --dataset DIR: score a base model alone. The protocol is the run's "
        "(its config.yaml) unless options below change it.",
    )
    s.add_argument("run_dir", nargs="?", help="run folder written by `voicetune train`")
    s.add_argument(
        "--checkpoint", default="latest", help="'latest', 'best' or a checkpoint folder name like step_100"
    )
    s.add_argument(
        "--checkpoints", help="'all' (every checkpoint on disk) or a comma-separated list of names"
    )
    s.add_argument("--base", help="score this base model folder alone (with --dataset)")
    s.add_argument("--dataset", help="dataset folder whose speaker and eval split --base is scored on")
    s.add_argument("--backend", choices=available_backends(),
                   help="backend of --base (default: the one whose layout the folder has)")
    s.add_argument("--out", default="base_eval", help="folder for the --base scores (default: base_eval)")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    s.add_argument("--force", action="store_true", help=FORCE_HELP)
    _add_options(s.add_argument_group("evaluation protocol options"), list(_protocol_options().values()),
                 aliases=True)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser(
        "export",
        help="write a self-contained model package",
        description="Write the backend's native layout (loadable by the upstream library "
        "unchanged), reference clips sorted by length, voicetune.json and a README model card.",
    )
    s.add_argument("run_dir", help="run folder written by `voicetune train`")
    s.add_argument("--out", required=True, help="package folder to write")
    s.add_argument("--checkpoint", default="auto",
                   help="'auto' (default: the best evaluation when training marked one, else the latest), "
                   "'best', 'latest' or a checkpoint folder name like step_100")
    s.add_argument("--force", action="store_true", help=FORCE_HELP)
    s.add_argument("--no-check", action="store_true",
                   help="skip the export check (the written package is loaded back and must not render "
                   "like the base model when the checkpoint does not)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("synthesize", help="speak text with an exported package",
                       description="Render text in the voice of the package's reference clips (or "
                                   "--reference).")
    s.add_argument("package_dir", help="package written by `voicetune export` (or a native model folder)")
    s.add_argument("--text", required=True, help="the text to speak")
    s.add_argument("--out", required=True, help="wav file to write")
    s.add_argument(
        "--reference", action="append", help="reference clip(s); default: the package's reference/"
    )
    s.add_argument("--language", help="default: the dataset language recorded in the package")
    s.add_argument("--seed", type=int, default=0, help="sampling seed (same seed, same audio; default: 0)")
    s.add_argument("--force", action="store_true", help="replace --out if it exists")
    s.add_argument(
        "--preset",
        help="speed/quality preset of backends that have them (tortoise: fast (default), "
        "ultra_fast, very_fast, standard, high_quality, evaluation)",
    )
    s.set_defaults(func=cmd_synthesize)

    s = sub.add_parser("doctor", help="pre-flight checks: disk, RAM, GPU, base folder; does the stack work",
                       description="Check disk, RAM, GPU, packages, the ASR model and (with --base) the "
                       "base folder; with --dataset too, measure training memory on the GPU. Then, in a few "
                       "seconds on the CPU, check that the stack WORKS: a tiny XTTS model synthesizes a "
                       "sentence through coqui-tts, and ASR (Whisper), the speaker encoder (Resemblyzer) and "
                       "the MOS model (DistillMOS) score it. Prints the versions of torch, transformers, "
                       "coqui-tts and faster-whisper; a failure names the component and its cause. Exit "
                       "status 1 when a check fails.")
    s.add_argument("--skip-stack-check", action="store_true",
                   help="leave out the stack check (tiny model synthesis, ASR, speaker encoder, MOS)")
    s.add_argument("--base", help="base model folder to check for completeness")
    s.add_argument("--backend", default=TrainConfig.backend, choices=available_backends(),
                   help="backend whose layout --base should have (default: %(default)s)")
    s.add_argument(
        "--dataset",
        help="prepared dataset folder: with --base, a short training dry run on the GPU "
        "measures peak memory and recommends batch size, accumulation, precision and checkpointing",
    )
    s.add_argument("--json", action="store_true",
                   help="print the checks and recommendations as JSON (for programs, e.g. the web UI)")
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser(
        "ui",
        help="a local web UI: dataset review, training with live curves, A/B listening, export",
        description="Start the web UI (Gradio) over a workspace folder: upload recordings and "
        "prepare them, review every clip, train with live curves (training runs in its own process "
        "and survives a closed browser), compare checkpoints by ear and export. It listens on "
        "127.0.0.1 only unless --allow-remote is given.",
    )
    s.add_argument(
        "--workspace",
        default="voicetune_workspace",
        help="folder for recordings, datasets, base models, runs and exports; every path typed in the "
        "UI must lie inside it (default: %(default)s)",
    )
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s)")
    s.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    s.add_argument(
        "--auth",
        metavar="USER:PASS",
        help="require this user name and password (or set VOICETUNE_UI_AUTH=USER:PASS, which other "
        "users of the machine cannot read from the process list)",
    )
    s.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host other than the loopback interface (anyone who reaches it can use the UI)",
    )
    s.add_argument("--max-upload-mb", type=float, default=2048.0,
                   help="refuse uploaded files larger than this (default: %(default)g MB)")
    s.set_defaults(func=cmd_ui)

    s = sub.add_parser("demo", help="the whole pipeline on generated recordings (what `make demo` runs)",
                       description="Generate ~3 minutes of recordings of one speaker with the packaged Piper "
                       "voice, then run prepare → make-tiny-base → train → evaluate → export → synthesize. "
                       "The tiny base is UNTRAINED, so the resulting voice is not usable: real use takes an "
                       "XTTS-v2 base folder.")
    s.add_argument("--workdir", default="demo_run", help="folder for all demo outputs")
    s.add_argument(
        "--max-steps", type=int, default=None, help="training steps (default: a few minutes on CPU)"
    )
    s.set_defaults(func=cmd_demo)


MODEL_COMMANDS = ("train", "evaluate", "export", "synthesize", "doctor", "demo", "make-tiny-base")


def build_parser(backend: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; ``train`` takes the options of ``backend`` (default: the default backend)."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = _Parser(
        prog="voicetune", formatter_class=fmt, epilog=EPILOG,
        description="Turn your own recordings into a finetuned voice-cloning TTS model, "
        "and measure (speaker similarity, intelligibility, naturalness) whether it got better.",
    )
    p.add_argument("--version", action="version", version=f"voicetune {__version__}")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging and third-party warnings on the console, tracebacks of errors")
    p.add_argument("--log-file", metavar="PATH", help="append everything logged (debug level, third-party "
                   "warnings, tracebacks) to this file; `train` writes RUN_DIR/train.log unless this is "
                   "given")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    _add_data_commands(sub, fmt)
    _add_model_commands(sub, fmt, backend or TrainConfig.backend)
    _add_result_commands(sub, fmt)
    return p


def main(argv: list[str] | None = None) -> int:
    from voicetune.utils.log import setup_logging

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_backend_of(argv))
    args, extra = parser.parse_known_args(argv)
    if extra:  # the subcommand's parser knows its flags: it suggests the closest one
        chosen = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
        if args.command == "dataset":
            chosen = chosen._subparsers._group_actions[0].choices[args.dataset_command]  # type: ignore[union-attr]
        chosen.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = argv
    setup_logging(args.verbose, args.log_file)
    if args.command in MODEL_COMMANDS:  # they import transformers anyway: its messages go through our filter
        from voicetune.utils.log import route_library_logging

        route_library_logging()
    try:
        return args.func(args)
    except ConfigError as e:
        logger.error("invalid option: %s", e)
    except OSError as e:
        logger.debug("%s failed", args.command, exc_info=True)  # the traceback: --verbose and the log file
        if e.errno == errno.ENOSPC and not isinstance(e, DiskFullError):
            logger.error("%s failed: the disk is full (%s)", args.command, e.filename or e)
        else:
            logger.error("%s failed: %s", args.command, e)
    except (ValueError, RuntimeError) as e:
        logger.debug("%s failed", args.command, exc_info=True)  # the traceback: --verbose and the log file
        logger.error("%s failed: %s", args.command, e)
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    finally:
        from voicetune.utils.log import close_log_files

        close_log_files()
    return 1


if __name__ == "__main__":
    sys.exit(main())
