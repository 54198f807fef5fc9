"""The Evaluate tab: the checkpoint table (every metric and its change against the base model, the best
marked), A/B players for the real recording, the base model and any evaluated checkpoint on the same sentence,
synthesis of any text with any checkpoint and reference clip, and the run's verdict when its evaluation wrote
one. Everything is read from the run folder (:mod:`voicetune.ui.evals`); re-scoring calls
:func:`voicetune.evaluate` and synthesis :func:`voicetune.synthesis.load_voice`."""

from __future__ import annotations

import html
import logging
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr

from voicetune.ui import process
from voicetune.ui.safety import UiSafetyError
from voicetune.ui.widgets import choices_update, message, progress_html
from voicetune.ui.workspace import Workspace

logger = logging.getLogger(__name__)

DEFAULT_REFS = "the run's 3 longest training clips"
MAX_TEXT_CHARS = 1000
_voice_lock = threading.Lock()
_voice_cache: dict[str, Any] = {}  # one loaded model: key -> Voice (the last one asked for)


def _voice(run_dir: Path, checkpoint: str) -> Any:
    """The loaded model of ``checkpoint`` of ``run_dir`` (kept loaded until another one is asked for)."""
    from voicetune.run import resolve_checkpoint
    from voicetune.synthesis import BASE, load_voice

    stamp = "" if checkpoint == BASE else str(resolve_checkpoint(run_dir, checkpoint).stat().st_mtime)
    key = f"{run_dir}|{checkpoint}|{stamp}"
    with _voice_lock:
        if key not in _voice_cache:
            _voice_cache.clear()
            _voice_cache[key] = load_voice(run_dir, checkpoint)
        return _voice_cache[key]


def _dataset_clips(run_dir: Path) -> list[tuple[str, str]]:
    """(label, path) of the kept clips of the run's dataset, for the reference chooser."""
    from voicetune.data.manifest import Dataset
    from voicetune.run import RunInfo

    try:
        ds = Dataset.load(RunInfo.load(run_dir).dataset)
    except (ValueError, OSError):
        return []
    return [(f"{c.audio_path.stem}: {c.text[:60]}", str(c.audio_path)) for c in ds.train + ds.eval]


def build(ws: Workspace) -> dict[str, Any]:
    with gr.Row():
        run = gr.Dropdown(label="run", choices=[], elem_id="vt-eval-run", scale=3)
        reload_btn = gr.Button("Reload", scale=0, min_width=90)
    verdict = gr.HTML(visible=False, elem_id="vt-verdict")
    table = gr.HTML(elem_id="vt-eval-table")
    with gr.Row():
        rescore_btn = gr.Button("Score every checkpoint again (voicetune evaluate --checkpoints all)",
                                elem_id="vt-rescore")
    rescore_status = gr.HTML(elem_id="vt-rescore-status")

    gr.Markdown("### Listen: the same sentence from the recording, the base model and a checkpoint")
    with gr.Row():
        sentence = gr.Dropdown(label="sentence", choices=[], elem_id="vt-ab-sentence", scale=3)
        evaluation = gr.Dropdown(
            label="checkpoint evaluation", choices=[], elem_id="vt-ab-evaluation", scale=1
        )
    with gr.Row():
        players, captions = [], []
        for who in ("recording (ground truth)", "base model", "checkpoint"):
            with gr.Column():
                players.append(gr.Audio(label=who, type="filepath", interactive=False,
                                        elem_id=f"vt-ab-{who.split()[0]}"))
                captions.append(gr.HTML())

    gr.Markdown("### Synthesize any text")
    with gr.Row():
        text = gr.Textbox(
            label="text", value="Hello, this is my own voice.", lines=2, elem_id="vt-synth-text", scale=3
        )
        with gr.Column(scale=2):
            model = gr.Dropdown(label="model", choices=[], elem_id="vt-synth-model")
            reference = gr.Dropdown(label="reference clip", choices=[DEFAULT_REFS], value=DEFAULT_REFS,
                                    elem_id="vt-synth-ref")
            seed = gr.Number(label="seed", value=0, precision=0, elem_id="vt-synth-seed")
    synth_btn = gr.Button("Synthesize", variant="primary", elem_id="vt-synth")
    synth_audio = gr.Audio(label="result", type="filepath", interactive=False, elem_id="vt-synth-audio")
    synth_msg = gr.HTML(elem_id="vt-synth-msg")

    def show(name: str | None, current_sentence: Any, current_eval: str | None) -> tuple[Any, ...]:
        from voicetune.ui import evals as E  # the evaluation's readers import torch: only when used
        if not name:
            return (gr.update(visible=False), "<p class='vt-muted'>No run yet.</p>", gr.update(choices=[]),
                    gr.update(choices=[]), gr.update(choices=[]), gr.update(choices=[DEFAULT_REFS]))
        try:
            run_dir = ws.run_dir(name)
            r = E.load(run_dir)
        except (UiSafetyError, ValueError, OSError) as e:
            return (gr.update(visible=False), message("error", str(e)), *(gr.skip(),) * 4)
        said = E.verdict(run_dir)
        verdict_html = (
            gr.update(
                value=f"<div class='vt-verdict'><b>Verdict</b><p>{html.escape(said)}</p></div>", visible=True
            )
            if said
            else gr.update(visible=False)
        )
        sents = E.sentences(r)
        names = E.evaluation_names(r)
        best = next((x.name for x in E.rows(r) if x.best), None)
        pick = current_eval if current_eval in names else best or (names[-1] if names else None)
        values = [i for _, i in sents]
        sentence_update = gr.update(choices=sents, value=current_sentence if current_sentence in values
                                    else (values[0] if values else None))
        from voicetune.run import list_checkpoints

        models = ["base", *[p.name for p in list_checkpoints(run_dir)]]
        refs = [(DEFAULT_REFS, DEFAULT_REFS), *_dataset_clips(run_dir)]
        model_value = best if best in models else models[-1]
        return (verdict_html, E.table_html(r), sentence_update, gr.update(choices=names, value=pick),
                gr.update(choices=models, value=model_value), gr.update(choices=refs, value=DEFAULT_REFS))

    show_outputs = [verdict, table, sentence, evaluation, model, reference]
    run.change(show, [run, sentence, evaluation], show_outputs)
    reload_btn.click(show, [run, sentence, evaluation], show_outputs)

    def listen(name: str | None, index: Any, ev: str | None) -> list[Any]:
        from voicetune.ui import evals as E
        empty = [None, None, None, "", "", ""]
        if not name or index is None:
            return empty
        try:
            r = E.load(ws.run_dir(name))
        except (UiSafetyError, ValueError, OSError):
            return empty
        found = {t.who: t for t in E.takes(r, int(index), ev)}
        out_audio, out_caps = [], []
        for who in ("recording", "base model", ev):
            t = found.get(who) if who else None
            out_audio.append(str(t.audio) if t and t.audio else None)
            out_caps.append(
                f"<div class='vt-muted'>{html.escape(t.caption())}</div>"
                if t
                else "<div class='vt-muted'>none for this sentence (probe sentences have no recording)</div>"
            )
        return out_audio + out_caps

    for comp in (sentence, evaluation):
        comp.change(listen, [run, sentence, evaluation], [*players, *captions])

    def synthesize(
        name: str | None, words: str, ckpt: str | None, ref: str | None, sd: Any
    ) -> tuple[Any, str]:
        try:
            if not name or not ckpt:
                raise UiSafetyError("choose a run and a model")
            if not words or not words.strip():
                raise UiSafetyError("type the text to speak")
            if len(words) > MAX_TEXT_CHARS:
                raise UiSafetyError(
                    f"the text is {len(words)} characters; at most {MAX_TEXT_CHARS} at a time"
                )
            run_dir = ws.run_dir(name)
            refs = None
            if ref and ref != DEFAULT_REFS:
                if ref not in {p for _, p in _dataset_clips(run_dir)}:
                    raise UiSafetyError(f"{ref}: not a clip of this run's dataset")
                refs = [Path(ref)]
            t0 = time.time()
            voice = _voice(run_dir, ckpt)
            out = run_dir / "synth" / f"{ckpt}_{time.strftime('%Y%m%d-%H%M%S')}_{int(sd or 0)}.wav"
            wav = voice.say(words, out, reference=refs, seed=int(sd or 0))
        except (UiSafetyError, ValueError, OSError, RuntimeError) as e:
            return None, message("error", str(e))
        return str(out), message("ok", f"{ckpt}: {wav.duration:.2f} s of audio in {time.time() - t0:.1f} s "
                                       f"(saved as {ws.relative(out)})")

    synth_btn.click(
        synthesize, [run, text, model, reference, seed], [synth_audio, synth_msg], concurrency_limit=1
    )

    def rescore(name: str | None) -> Any:
        from voicetune.evaluation.rescore import rescore_run

        try:
            if not name:
                raise UiSafetyError("choose a run")
            run_dir = ws.run_dir(name)
            if process.process_state(run_dir).running:
                raise UiSafetyError(f"{name} is training: score its checkpoints once it has stopped")
        except UiSafetyError as e:
            yield message("error", str(e))
            return
        state: dict[str, Any] = {"done": 0, "total": 1, "what": "starting", "error": None, "text": ""}

        def work() -> None:
            try:
                state["text"] = rescore_run(run_dir, "all", progress=lambda d, t, w: state.update(
                    done=d, total=t, what=w)).text
            except (ValueError, OSError, RuntimeError) as e:
                state["error"] = e

        worker = threading.Thread(target=work, daemon=True, name="voicetune-ui-evaluate")
        worker.start()
        while worker.is_alive():
            yield progress_html(state["done"], state["total"], state["what"])
            worker.join(0.5)
        if state["error"] is not None:
            yield message("error", f"evaluation failed: {state['error']}")
        else:
            yield f"<pre class='vt-pre'>{html.escape(state['text'])}</pre>"

    rescore_btn.click(rescore, run, rescore_status, concurrency_limit=1).then(
        show, [run, sentence, evaluation], show_outputs)

    def on_load(current: str | None) -> Any:
        return choices_update(ws.runs(), current)

    return {"run": run, "on_load": on_load, "show": (show, [run, sentence, evaluation], show_outputs)}
