"""The prompt cache is verified, not trusted: hostile or damaged entries are recomputed, bounded.

A small fake model stands in for a converted release: ``prompt_context`` runs its real cache
reading and writing, and only the umT5 call (``umt5.text_context``) is replaced by a counted,
deterministic function of the prompt.
"""
import os
import shutil
import stat
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import run_within

from gvc_jax.models import text

TEXT_LEN, TEXT_DIM = 16, 32
PROMPT, OTHER = "a red bike on the road", "the road"
LIMIT_S = 120  # a hang guard (a call takes milliseconds): not a timing


def _rows(prompt):
    seed = int.from_bytes(prompt.encode("utf-8")[:8].ljust(8, b"\0"), "little")
    rows = np.random.default_rng(seed).normal(size=(TEXT_LEN, TEXT_DIM)).astype(np.float32)
    rows[len(prompt.split()) + 1:] = 0  # zeros past the tokens, as Wan pads them
    return rows


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv(text.CACHE_ENV, str(tmp_path / "cache"))
    model = SimpleNamespace(name="fake", path=str(tmp_path / "model"),
                            text_encoder={"fingerprint": "f" * 64, "config": {"dtype": "float32"}},
                            config=SimpleNamespace(dit=SimpleNamespace(text_len=TEXT_LEN, text_dim=TEXT_DIM)))
    calls = []

    def fake_text_context(encoder, tokenizer, prompt):
        assert (encoder, tokenizer) == ("encoder", "tokenizer")
        calls.append(prompt)
        return _rows(prompt)

    monkeypatch.setitem(text._LOADED, model.path, ("encoder", "tokenizer"))
    monkeypatch.setattr(text, "text_context", fake_text_context)  # as text.py imported it
    return SimpleNamespace(model=model, calls=calls, path=text.entry_path(model, PROMPT),
                           folder=os.path.join(str(tmp_path / "cache"), "text"))


def _context(env, prompt=PROMPT):
    """prompt_context with a hang guard: a read that blocks fails the test instead of hanging it."""
    return run_within(LIMIT_S, text.prompt_context, env.model, prompt)


def _warnings(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    return [line for line in err if line]


def _huge_npy_header(path):
    """A 193-byte-ish .npy that declares [2^40, 32] float32 (128 TiB) and holds nothing."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40, 32)})


def _huge_own_header(path):
    """A header of the cache's own format, right magic and key, declaring 2^31 rows."""
    with open(path, "rb") as f:
        head = bytearray(f.read(text._HEAD.size))
    head[40:44] = (1 << 31).to_bytes(4, "little")
    with open(path, "wb") as f:
        f.write(bytes(head))


def _zero_rows(path):
    with open(path, "r+b") as f:
        f.seek(text._HEAD.size)
        f.write(bytes(4 * TEXT_LEN * TEXT_DIM))


def _flip_one_bit(path):
    with open(path, "r+b") as f:
        f.seek(text._HEAD.size + 5)
        b = f.read(1)[0]
        f.seek(text._HEAD.size + 5)
        f.write(bytes([b ^ 1]))


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _old_npy(path):
    """What an earlier version cached: a plain .npy of the right rows (no key, no digest)."""
    os.unlink(path)
    with open(path, "wb") as f:
        np.save(f, _rows(PROMPT))


def _fifo(path):
    os.unlink(path)
    os.mkfifo(path)


def _dev_zero(path):
    os.unlink(path)
    os.symlink("/dev/zero", path)


def _link_to_good_copy(path):
    """Even a symlink to a valid entry is not followed."""
    shutil.copy(path, path + ".copy")
    os.unlink(path)
    os.symlink(os.path.basename(path) + ".copy", path)


def _directory(path):
    os.unlink(path)
    os.mkdir(path)


REGULAR = {"huge_npy_header": _huge_npy_header, "huge_own_header": _huge_own_header, "zeroed": _zero_rows,
           "one_bit": _flip_one_bit, "truncated": _truncate, "old_npy": _old_npy}
SPECIAL = {"fifo": _fifo, "symlink_dev_zero": _dev_zero, "symlink_good_copy": _link_to_good_copy,
           "directory": _directory}


def test_a_valid_entry_is_used_without_recomputing(env, capsys):
    first = _context(env)
    np.testing.assert_array_equal(first, _rows(PROMPT))
    assert env.calls == [PROMPT] and os.listdir(env.folder) == [os.path.basename(env.path)]
    again = _context(env)
    np.testing.assert_array_equal(again, first)
    assert again.dtype == np.float32 and again.flags.writeable
    assert env.calls == [PROMPT] and not _warnings(capsys)
    assert os.path.getsize(env.path) == text._HEAD.size + 4 * TEXT_LEN * TEXT_DIM


@pytest.mark.parametrize("damage", sorted(REGULAR))
def test_a_bad_regular_entry_is_recomputed_and_replaced(env, capsys, damage):
    clean = _context(env)
    REGULAR[damage](env.path)
    capsys.readouterr()
    rows = _context(env)
    np.testing.assert_array_equal(rows, clean)
    assert env.calls == [PROMPT, PROMPT]
    warned = _warnings(capsys)
    assert len(warned) == 1 and warned[0].startswith("warning: ") and env.path in warned[0], warned
    # replaced atomically, nothing left behind: the next call reads it without recomputing
    assert os.listdir(env.folder) == [os.path.basename(env.path)]
    np.testing.assert_array_equal(_context(env), clean)
    assert env.calls == [PROMPT, PROMPT] and not _warnings(capsys)


def test_another_prompts_entry_copied_over_is_recomputed(env, capsys):
    clean = _context(env)
    other = _context(env, OTHER)
    shutil.copy(text.entry_path(env.model, OTHER), env.path)
    capsys.readouterr()
    rows = _context(env)
    np.testing.assert_array_equal(rows, clean)
    assert not np.array_equal(rows, other) and env.calls == [PROMPT, OTHER, PROMPT]
    warned = _warnings(capsys)
    assert len(warned) == 1 and env.path in warned[0] and "another prompt" in warned[0], warned
    np.testing.assert_array_equal(_context(env), clean)
    assert env.calls == [PROMPT, OTHER, PROMPT]


def test_another_encoder_or_dtype_is_another_entry(env):
    _context(env)
    env.model.text_encoder = dict(env.model.text_encoder, config={"dtype": "bfloat16"})
    assert text.entry_path(env.model, PROMPT) != env.path
    _context(env)
    env.model.text_encoder = dict(env.model.text_encoder, fingerprint="0" * 64)
    _context(env)
    assert env.calls == [PROMPT] * 3 and len(os.listdir(env.folder)) == 3


@pytest.mark.parametrize("damage", sorted(SPECIAL))
def test_a_non_regular_entry_is_never_read_replaced_or_removed(env, capsys, damage):
    clean = _context(env)
    SPECIAL[damage](env.path)
    before = os.lstat(env.path)
    capsys.readouterr()
    for n in (2, 3):  # not cached: every call recomputes, with one warning
        rows = _context(env)
        np.testing.assert_array_equal(rows, clean)
        assert env.calls == [PROMPT] * n
        warned = _warnings(capsys)
        assert len(warned) == 1 and warned[0].startswith("warning: ") and env.path in warned[0], warned
        assert "not a regular file" in warned[0] and "not caching" in warned[0]
    after = os.lstat(env.path)
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode) and after.st_ino == before.st_ino
    assert not [f for f in os.listdir(env.folder) if f.startswith(".tmp-")]


def test_a_model_without_a_text_encoder_is_refused_before_the_cache(env):
    _context(env)
    env.model.text_encoder = None
    with pytest.raises(text.TextEncoderError, match="no text encoder"):
        text.prompt_context(env.model, PROMPT)
