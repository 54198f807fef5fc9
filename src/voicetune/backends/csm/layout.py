"""The CSM base-model folder: the Hugging Face layout of ``sesame/csm-1b``, its validation, and hub ids.

The layout ``CsmForConditionalGeneration.from_pretrained`` and ``AutoProcessor.from_pretrained`` read::

    BASE_DIR/
      config.json                 CsmConfig (model_type "csm"): backbone, depth_decoder_config,
                                  codec_config (Mimi)
      model.safetensors           the weights: backbone, depth decoder and the Mimi codec (codec_model.*);
                                  or model.safetensors.index.json + its shards
      generation_config.json      optional: sampling defaults (depth_decoder_* for the depth decoder)
      tokenizer.json              the text tokenizer (Llama-3 for csm-1b), with tokenizer_config.json
      preprocessor_config.json    the audio feature extractor (24 kHz); or a "feature_extractor" entry in
                                  processor_config.json (as transformers 5 writes it)
      chat_template.jinja         the prompt format ("[speaker]text" + audio); or a "chat_template" entry in
                                  processor_config.json / chat_template.json / tokenizer_config.json
      voicetune_csm.json          optional, written by voicetune: the speaker id and the transcripts of the
                                  reference clips a finetune was trained with; "untrained" for a tiny test
                                  base

``BASE`` may also be a hub id (``sesame/csm-1b``) when the hub is reachable: it is downloaded once into the
Hugging Face cache (the model is gated: accept its licence on the hub and log in with ``hf auth login``).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from voicetune.backends.base import BaseModelError
from voicetune.utils.paths import file_problem

logger = logging.getLogger(__name__)

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
GENERATION = "generation_config.json"
TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
PREPROCESSOR = "preprocessor_config.json"
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "processor_config.json", TOKENIZER_CONFIG)
SIDECAR = "voicetune_csm.json"

HUB_ID = "sesame/csm-1b"
# What a download of a hub id fetches (the weights, configs, tokenizer and processor files).
HUB_PATTERNS = ["*.json", "*.jinja", "*.safetensors", "*.txt", "*.model"]

_HINT = (
    f"A CSM base is a folder in the Hugging Face layout of {HUB_ID} (get it with `hf download {HUB_ID} "
    f"--local-dir csm-1b` after accepting its licence on https://huggingface.co/{HUB_ID}), a package "
    "written by `voicetune export`, or an untrained test model from `voicetune make-tiny-base --backend csm`."
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_hub_id(value: str | Path) -> bool:
    """Whether ``value`` names a hub repository (``org/name``) rather than an existing local folder."""
    text = str(value)
    return not Path(text).exists() and bool(_HUB_ID.match(text))


def resolve(base: str | Path, download: bool = True) -> Path:
    """The local folder of ``base``: the folder itself, or the hub snapshot of a hub id (downloaded into the
    Hugging Face cache when ``download``; else only when it is already cached). BaseModelError otherwise."""
    if not is_hub_id(base):
        return Path(base)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(base), allow_patterns=HUB_PATTERNS, local_files_only=not download))
    except Exception as e:  # hub errors of every kind: offline, gated, not found, an interrupted download
        how = "download" if download else "find in the local Hugging Face cache"
        raise BaseModelError(f"{base}: cannot {how} this hub model ({type(e).__name__}: {str(e)[:300]}). "
                             f"{_HINT}") from e


def _json(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(f"{path}: unreadable, not valid JSON ({e})")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a JSON object")
        return {}
    return data


def _check_config(path: Path, problems: list[str]) -> None:
    config = _json(path, problems)
    if not config:
        return
    if config.get("model_type") != "csm":
        problems.append(f"{path}: model_type is {config.get('model_type')!r}, not 'csm' (not a CSM model)")
        return
    codec = config.get("codec_config")
    if not isinstance(codec, dict) or codec.get("model_type") != "mimi":
        problems.append(
            f"{path}: codec_config is not a Mimi codec configuration (the audio codec is missing)"
        )


def _weight_files(path: Path, problems: list[str]) -> list[Path]:
    single, index = path / WEIGHTS, path / WEIGHTS_INDEX
    if file_problem(single) is None:
        return [single]
    if file_problem(index) is None:
        data = _json(index, problems)
        shards = sorted(set((data.get("weight_map") or {}).values()))
        if not shards:
            problems.append(f"{index}: names no weight shards")
        files = []
        for shard in shards:
            p = path / shard
            if Path(shard).name != shard:
                problems.append(f"{index}: shard {shard!r} lies outside the folder")
            elif (problem := file_problem(p)) is not None:
                problems.append(f"{p}: {problem} (a weight shard named by {WEIGHTS_INDEX})")
            else:
                files.append(p)
        return files
    bins = sorted(path.glob("*.bin")) + sorted(path.glob("*.pt*"))
    extra = f" (found {bins[0].name}: voicetune reads safetensors only, never pickles)" if bins else ""
    problems.append(f"{single}: missing (the model weights: backbone, depth decoder and Mimi codec){extra}")
    return []


def _has_chat_template(path: Path) -> bool:
    for name in CHAT_TEMPLATE_FILES:
        p = path / name
        if file_problem(p) is not None:
            continue
        if name.endswith(".jinja"):
            return True
        try:
            if json.loads(p.read_text(encoding="utf-8")).get("chat_template"):
                return True
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            continue
    return False


def _feature_extractor_file(path: Path) -> Path | None:
    if file_problem(path / PREPROCESSOR) is None:
        return path / PREPROCESSOR
    processor = path / "processor_config.json"
    if file_problem(processor) is None:
        try:
            if isinstance(json.loads(processor.read_text(encoding="utf-8")).get("feature_extractor"), dict):
                return processor
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            return None
    return None


def validate_base_dir(path: Path | str) -> dict[str, Path]:
    """Check that ``path`` holds a usable CSM layout; return its files by role (weights as ``weights``,
    ``weights_1``...). BaseModelError naming every missing or unreadable file, and where to get the model."""
    path = Path(path)
    if not path.is_dir():
        raise BaseModelError(f"{path}: base model folder does not exist or is not a folder. {_HINT}")
    problems: list[str] = []
    found: dict[str, Path] = {}
    for role, name, what in (
        ("config", CONFIG, "the CsmConfig of the model and its Mimi codec"),
        ("tokenizer", TOKENIZER, "the text tokenizer"),
        ("tokenizer_config", TOKENIZER_CONFIG, "the tokenizer's settings and special tokens"),
    ):
        problem = file_problem(path / name)
        if problem is None:
            found[role] = path / name
        else:
            problems.append(f"{path / name}: {problem} ({what})")
    if "config" in found:
        _check_config(found["config"], problems)
    extractor = _feature_extractor_file(path)
    if extractor is None:
        problems.append(
            f"{path / PREPROCESSOR}: missing, and processor_config.json has no 'feature_extractor' "
            "(the audio feature extractor of the processor)"
        )
    else:
        found["preprocessor"] = extractor
    for i, p in enumerate(_weight_files(path, problems)):
        found["weights" if i == 0 else f"weights_{i}"] = p
    if not _has_chat_template(path):
        problems.append(
            f"{path}: no chat template (chat_template.jinja, or a 'chat_template' entry in "
            "processor_config.json / chat_template.json / tokenizer_config.json): the prompt format"
        )
    if (path / GENERATION).is_file():
        found["generation"] = path / GENERATION
    if (path / SIDECAR).is_file():
        found["sidecar"] = path / SIDECAR
    if problems:
        raise BaseModelError(
            f"{path} is not a usable CSM base model:\n  " + "\n  ".join(problems) + f"\n{_HINT}"
        )
    return found


def read_sidecar(path: Path | str) -> dict[str, Any]:
    """voicetune's own settings of a base folder (``voicetune_csm.json``); {} when it has none."""
    p = Path(path) / SIDECAR
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BaseModelError(f"{p}: unreadable ({e}); delete it or restore it from the export") from e
    if not isinstance(data, dict):
        raise BaseModelError(f"{p}: expected a JSON object")
    return data
