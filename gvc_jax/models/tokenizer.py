"""Wan's prompt tokenizer (umT5 sentencepiece, via a local ``tokenizer.json``) without transformers.

``TextTokenizer.from_file(path).encode(prompt)`` gives the ids that Wan feeds its umT5 encoder:
the prompt is cleaned as Wan's ``HuggingfaceTokenizer(clean='whitespace')`` does (``clean_prompt``),
then tokenized exactly as transformers' ``tokenizer(text, truncation=True, max_length=512,
add_special_tokens=True)["input_ids"]`` (EOS appended by the file's post-processor; truncation
keeps the first ``max_length - 1`` pieces and the EOS), without padding (Wan's mask marks the pad).

Cleaning: Wan runs ``ftfy.fix_text``, then ``html.unescape`` twice, strips, collapses runs of
whitespace to one space and strips again. ftfy is optional here: when it is not installed the
ftfy step is skipped (``FTFY_AVAILABLE``), which only changes prompts with mojibake or unusual
Unicode that ftfy would repair (the GVC runs use the empty prompt).
"""
from __future__ import annotations

import html
import os
import re
from typing import List

try:  # pragma: no cover - depends on the environment
    import ftfy as _ftfy
except ImportError:  # pragma: no cover
    _ftfy = None

FTFY_AVAILABLE = _ftfy is not None
TEXT_LEN = 512
_WS = re.compile(r"\s+")


def basic_clean(text: str) -> str:
    """Wan's ``basic_clean``: ftfy (if installed), html.unescape twice, strip."""
    if _ftfy is not None:
        text = _ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def whitespace_clean(text: str) -> str:
    """Wan's ``whitespace_clean``: runs of whitespace -> one space, strip."""
    return _WS.sub(" ", text).strip()


def clean_prompt(text: str) -> str:
    """Wan's ``clean='whitespace'`` prompt cleaning: ``whitespace_clean(basic_clean(text))``."""
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a str, got {type(text).__name__}")
    return whitespace_clean(basic_clean(text))


class TextTokenizer:
    """A ``tokenizers.Tokenizer`` loaded from a local ``tokenizer.json``, set up like transformers'
    fast tokenizer for Wan: right truncation to ``max_length`` ids (special tokens included), no
    padding. ``encode(prompt) -> list[int]``."""

    def __init__(self, tokenizer, max_length: int = TEXT_LEN, *, path: str = ""):
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        self._tok = tokenizer
        self.max_length = max_length
        self.path = path
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_length, stride=0, strategy="longest_first",
                                    direction="right")

    @classmethod
    def from_file(cls, path: str, max_length: int = TEXT_LEN) -> "TextTokenizer":
        """``path``: a ``tokenizer.json`` file or a directory holding one. FileNotFoundError if it
        does not exist, ValueError (naming the path) if it cannot be read as a tokenizer."""
        from tokenizers import Tokenizer

        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        try:
            tok = Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception for unreadable / invalid files
            msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise ValueError(f"{path} is not a readable tokenizer.json: {msg}") from None
        return cls(tok, max_length, path=path)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode_clean(self, text: str) -> List[int]:
        """Ids of already-cleaned text (EOS appended, truncated to ``max_length``)."""
        return list(self._tok.encode(text, add_special_tokens=True).ids)

    def encode(self, prompt: str) -> List[int]:
        """Wan's ids for ``prompt``: ``encode_clean(clean_prompt(prompt))``."""
        return self.encode_clean(clean_prompt(prompt))

    def __repr__(self) -> str:
        return f"TextTokenizer({self.path!r}, max_length={self.max_length})"
