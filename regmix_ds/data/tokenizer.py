"""Tokenizers for `prepare`: load a Hugging Face one, or train a small byte-level BPE offline.

A trained tokenizer is saved as a `PreTrainedTokenizerFast` directory (loadable by
`AutoTokenizer.from_pretrained`) together with `regmix_tokenizer.json`, which records what it
was trained on, so re-running `prepare --train-tokenizer` on the same corpus reuses it.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import read_json, replace_directory, write_json_atomic
from regmix_ds.core.progress import interactive

EOS_TOKEN = "<|endoftext|>"
TRAINING_RECORD = "regmix_tokenizer.json"
GENERIC_CLASSES = {"PreTrainedTokenizerFast", "TokenizersBackend"}
HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")  # fullmatch: no trailing newline


def load_tokenizer(spec: str, local: Path, where: str) -> Any:
    """The fast tokenizer in directory `local`, else the hub name `spec` (from the local HF cache).

    `spec` is the value as configured; `local` is it resolved against the config's directory.
    """
    if local.exists():
        source = str(local)
    elif HUB_NAME.fullmatch(spec) and not spec.startswith("."):
        source = spec
    else:
        raise RegmixError(where, f"tokenizer directory {local} not found")
    try:
        tokenizer = _tokenizer_class(local).from_pretrained(source)
    except Exception as err:  # transformers and tokenizers raise many types for a damaged directory
        message = str(err).strip()
        first_line = f"{type(err).__name__}: {message.splitlines()[0]}" if message else type(err).__name__
        raise RegmixError(where, f"cannot load tokenizer {source!r} ({first_line[:300]})") from None
    _check_usable(tokenizer, source, where)
    return tokenizer


def _tokenizer_class(local: Path) -> Any:
    """The generic fast tokenizer for plain `tokenizer.json` directories (like ours), else AutoTokenizer.

    AutoTokenizer imports torch (seconds), which `prepare` otherwise never needs.
    """
    config = local / "tokenizer_config.json"
    if config.exists() and read_json(config).get("tokenizer_class") in GENERIC_CLASSES:
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast
    from transformers import AutoTokenizer

    return AutoTokenizer


def _check_usable(tokenizer: Any, source: str, where: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise RegmixError(where, f"tokenizer {source!r} is not a fast (Rust) tokenizer")
    if tokenizer.eos_token_id is None:
        raise RegmixError(where, f"tokenizer {source!r} has no end-of-document (EOS) token")


def fingerprint(tokenizer: Any) -> str:
    """A hash of everything that decides token ids: the backend's full JSON and the EOS id."""
    serialized = tokenizer.backend_tokenizer.to_str() + f"|eos={tokenizer.eos_token_id}"
    return hashlib.sha256(serialized.encode()).hexdigest()[:16]


def info(tokenizer: Any, spec: str, local: Path, manifest_dir: Path) -> dict:
    """The manifest's tokenizer entry: path (relative if local, else the hub name), sizes, EOS."""
    path = os.path.relpath(local, manifest_dir) if local.exists() else spec
    return {
        "path": path,
        "vocab_size": len(tokenizer),
        "eos_token_id": int(tokenizer.eos_token_id),
        "fingerprint": fingerprint(tokenizer),
    }


def trained_tokenizer_is_current(out_dir: Path, corpus_hash: str, vocab_size: int) -> bool:
    """Whether `out_dir` holds a tokenizer we trained on this corpus with this vocabulary size."""
    record = out_dir / TRAINING_RECORD
    if not record.exists():
        return False
    data = read_json(record)
    return data == {"corpus_hash": corpus_hash, "vocab_size": vocab_size}


def check_can_train_into(out_dir: Path, where: str) -> None:
    """Refuse to overwrite a directory that is not a tokenizer this module trained."""
    if out_dir.exists() and (not out_dir.is_dir()
                             or (any(out_dir.iterdir()) and not (out_dir / TRAINING_RECORD).exists())):
        raise RegmixError(where, f"{out_dir} exists and is not a tokenizer trained by regmix-ds; will not overwrite it")


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path, corpus_hash: str) -> None:
    """Train a byte-level BPE (GPT-2 style, EOS `<|endoftext|>`) and save it to `out_dir` atomically.

    The directory is built beside `out_dir` and renamed into place, so a crash never leaves
    a half-saved tokenizer that a later run would load.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=interactive(),
    )
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_TOKEN)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        tokenizer.save_pretrained(staging)
        write_json_atomic(staging / TRAINING_RECORD, {"corpus_hash": corpus_hash, "vocab_size": vocab_size})
        replace_directory(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


