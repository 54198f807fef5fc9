"""Extending XTTS's BPE vocabulary with the characters and words of a dataset it does not cover.

XTTS-v2's ``vocab.json`` is a ``tokenizers`` BPE. Text the vocabulary cannot encode becomes ``[UNK]`` and the
clip is dropped from training. :func:`extend_vocab` appends what is missing, without changing how any text
the old vocabulary could encode is tokenized:

1. every character of the (cleaned) transcripts that is not a token becomes one, with the next free id;
2. BPE merges are learned on the words that contain such characters, and only merges with a new character
   on one side are kept: old text holds no new character, so no new merge can ever apply to it. New merges
   rank after all old ones (BPE applies the lowest rank first), so old merges still apply first.

Old ids never move; :func:`resize_text_tokens` grows the GPT's ``text_embedding`` and ``text_head`` to the new
size and initialises the new rows with the mean of the existing ones.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger(__name__)


@dataclass
class VocabExtension:
    """The extended ``vocab.json`` text and what was added."""

    text: str
    old_size: int
    new_size: int
    new_chars: list[str] = field(default_factory=list)
    new_merges: list[str] = field(default_factory=list)
    still_unknown: int = 0  # transcripts that still hold [UNK] after the extension

    def summary(self) -> str:
        if self.new_size == self.old_size:
            return f"the vocabulary ({self.old_size} tokens) already covers every transcript"
        chars = " ".join(self.new_chars[:30]) + (" ..." if len(self.new_chars) > 30 else "")
        return (
            f"extended the vocabulary from {self.old_size} to {self.new_size} tokens: "
            f"{len(self.new_chars)} new characters ({chars}), {len(self.new_merges)} new merges; "
            f"{self.still_unknown} transcripts still hold unknown characters"
        )


def number_of_tokens(tokenizer_json: str) -> int:
    """``VoiceBpeTokenizer.get_number_tokens()`` of a vocab.json text: the highest id + 1."""
    data = json.loads(tokenizer_json)
    ids = list(data["model"]["vocab"].values()) + [t["id"] for t in data.get("added_tokens", [])]
    return max(ids) + 1


def _words(tok: Any, cleaned: str) -> list[str]:
    """The words BPE sees: spaces are the ``[SPACE]`` special token, then the pre-tokenizer splits."""
    if tok.normalizer is not None:
        cleaned = tok.normalizer.normalize_str(cleaned)
    if tok.pre_tokenizer is None:
        return [w for w in cleaned.split(" ") if w]
    return [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(cleaned)]


def _cleaned(voice_tokenizer: Any, texts: Iterable[tuple[str, str]]) -> list[str]:
    out = []
    for text, language in texts:
        lang = language.split("-")[0]
        try:
            out.append(voice_tokenizer.preprocess_text(text.strip(), lang))
        except NotImplementedError:  # the language has no cleaner in coqui-tts: the clip is dropped anyway
            continue
    return out


def _learn_merges(
    seqs: dict[str, list[str]],
    counts: Counter,
    new_chars: set[str],
    known: set[str],
    budget: int,
    min_frequency: int = 2,
) -> list[tuple[str, str]]:
    """Greedy BPE merge learning on ``seqs`` (word -> symbols), keeping only merges that touch a new char."""
    merges: list[tuple[str, str]] = []
    while len(merges) < budget:
        pairs: Counter = Counter()
        for word, symbols in seqs.items():
            for a, b in itertools.pairwise(symbols):
                if (a + b) not in known and (set(a) | set(b)) & new_chars:
                    pairs[(a, b)] += counts[word]
        if not pairs:
            break
        (a, b), freq = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if freq < min_frequency:
            break
        merges.append((a, b))
        known.add(a + b)
        for word, symbols in seqs.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            seqs[word] = merged
    return merges


def extend_vocab(
    voice_tokenizer: Any, texts: Sequence[tuple[str, str]], max_new_tokens: int = 256
) -> VocabExtension:
    """Extend the BPE of a coqui-tts ``VoiceBpeTokenizer`` to cover ``texts`` ((transcript, language) pairs).

    Every missing character is added even beyond ``max_new_tokens`` (a warning says so); merges fill the rest
    of the budget. Returns the new vocab.json text (the tokenizer itself is not changed).
    """
    from tokenizers import Tokenizer

    tok = voice_tokenizer.tokenizer
    original = tok.to_str()
    data = json.loads(original)
    model = data["model"]
    if model.get("type") != "BPE":
        raise ValueError(
            f"vocab.json holds a {model.get('type')} model; only BPE vocabularies can be extended"
        )
    vocab: dict[str, int] = model["vocab"]
    old_size = number_of_tokens(original)
    cleaned = _cleaned(voice_tokenizer, texts)
    words: Counter = Counter(w for c in cleaned for w in _words(tok, c))
    char_counts: Counter = Counter(
        ch for w, n in words.items() for ch in w for _ in range(n) if ch not in vocab
    )
    new_chars = sorted(char_counts, key=lambda ch: (-char_counts[ch], ch))
    if len(new_chars) > max_new_tokens:
        logger.warning(
            "%d characters are missing from the vocabulary, more than --extend-vocab-size %d; all are added",
            len(new_chars),
            max_new_tokens,
        )
    next_id = old_size
    for ch in new_chars:
        vocab[ch] = next_id
        next_id += 1
    uncovered = {w: n for w, n in words.items() if set(w) & set(new_chars)}
    merges: list[tuple[str, str]] = []
    if uncovered and max_new_tokens > len(new_chars):
        chars_only = Tokenizer.from_str(json.dumps(data))
        seqs = {w: [t.value for t in chars_only.model.tokenize(w)] for w in uncovered}
        merges = _learn_merges(
            seqs, Counter(uncovered), set(new_chars), set(vocab), max_new_tokens - len(new_chars)
        )
    string_merges = bool(model["merges"]) and isinstance(model["merges"][0], str)
    for a, b in merges:
        vocab[a + b] = next_id
        next_id += 1
        model["merges"].append(f"{a} {b}" if string_merges else [a, b])
    text = json.dumps(data, ensure_ascii=False, indent=2)
    extended = Tokenizer.from_str(text)
    unk = extended.token_to_id("[UNK]")
    still = 0
    for c in cleaned:
        ids = extended.encode(c.replace(" ", "[SPACE]")).ids
        still += unk is not None and unk in ids
    ext = VocabExtension(
        text, old_size, number_of_tokens(text), new_chars, [f"{a} {b}" for a, b in merges], still
    )
    logger.info("%s", ext.summary())
    return ext


def check_extends(old_json: str, new_json: str) -> None:
    """Raise ValueError unless ``new_json`` keeps every token of ``old_json`` at the same id."""
    old, new = json.loads(old_json)["model"]["vocab"], json.loads(new_json)["model"]["vocab"]
    moved = [t for t, i in old.items() if new.get(t) != i]
    if moved:
        raise ValueError(
            f"the vocabulary is not an extension of the base's: {len(moved)} tokens moved or vanished "
            f"(e.g. {moved[:5]})"
        )


@torch.no_grad()
def resize_text_tokens(gpt: Any, new_size: int) -> int:
    """Grow ``gpt.text_embedding``, ``gpt.text_head`` to ``new_size`` tokens (new rows: the old rows' mean).

    Returns the number of rows added (0 when the size is unchanged). Shrinking is refused.
    """
    emb, head = gpt.text_embedding, gpt.text_head
    old = emb.num_embeddings
    if new_size < old:
        raise ValueError(f"cannot shrink the text vocabulary from {old} to {new_size} tokens")
    if new_size == old:
        return 0
    extra = new_size - old
    new_emb = torch.nn.Embedding(
        new_size, emb.embedding_dim, device=emb.weight.device, dtype=emb.weight.dtype
    )
    new_emb.weight.copy_(torch.cat([emb.weight, emb.weight.mean(0, keepdim=True).expand(extra, -1)]))
    new_head = torch.nn.Linear(
        head.in_features,
        new_size,
        bias=head.bias is not None,
        device=head.weight.device,
        dtype=head.weight.dtype,
    )
    new_head.weight.copy_(torch.cat([head.weight, head.weight.mean(0, keepdim=True).expand(extra, -1)]))
    if head.bias is not None:
        new_head.bias.copy_(torch.cat([head.bias, head.bias.mean().expand(extra)]))
    new_emb.weight.requires_grad_(emb.weight.requires_grad)
    for p_new, p_old in zip(new_head.parameters(), head.parameters()):
        p_new.requires_grad_(p_old.requires_grad)
    gpt.text_embedding, gpt.text_head = new_emb, new_head
    gpt.number_text_tokens = new_size
    return extra
