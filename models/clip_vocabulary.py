"""A small byte-level BPE vocabulary for a locally built CLIP tokenizer, written from prompts.

A random-weight CLIP still needs a real ``CLIPTokenizer``; its vocabulary is written here so
that every word of the profile's prompts becomes a few real tokens, while any other text still
tokenizes (down to bytes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from core.registry import ModelSpec

START, END = "<|startoftext|>", "<|endoftext|>"
# CLIPTokenizer's pre-tokenizer splits words like this (letters, single digits, punctuation runs).
WORD = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: every byte as a printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(mapping.items()))


def prompts_of(specs: Iterable[ModelSpec]) -> list[str]:
    """Every prompt of every class of ``specs``, in order."""
    return [prompt for spec in specs for cls in spec.classes for prompt in cls.prompts]


def prompt_words(prompts: list[str]) -> list[str]:
    """The words CLIPTokenizer's pre-tokenizer makes of ``prompts`` (lower-cased), sorted."""
    return sorted({word for prompt in prompts for word in WORD.findall(prompt.lower())})


def write_clip_vocabulary(directory: Path, words: list[str]) -> int:
    """Write ``vocab.json`` and ``merges.txt`` of a byte-level BPE covering ``words``.

    The vocabulary holds the 256 byte symbols (alone and word-final, ``</w>``), one merge chain
    per word, and the two special tokens last, as in OpenAI's CLIP. Any text still tokenizes
    (down to bytes); the prompts' words become few tokens. Returns the vocabulary size."""
    alphabet = bytes_to_unicode()
    vocab: dict[str, int] = {}
    for symbol in alphabet.values():
        vocab[symbol] = len(vocab)
    for symbol in alphabet.values():
        vocab[symbol + "</w>"] = len(vocab)
    merges: list[str] = []
    for word in words:
        pieces = ["".join(alphabet[b] for b in char.encode()) for char in word]
        pieces[-1] += "</w>"
        current = pieces[0]
        for piece in pieces[1:]:
            merge = f"{current} {piece}"
            if merge not in merges:
                merges.append(merge)
            current += piece
            vocab.setdefault(current, len(vocab))
    vocab[START] = len(vocab)
    vocab[END] = len(vocab)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return len(vocab)
