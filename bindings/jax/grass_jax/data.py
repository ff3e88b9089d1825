"""Byte-level text for the trainer: the `.py` sources of the Python standard library of the
interpreter that runs it (present wherever the trainer can run, so nothing is downloaded).

Files are split into train and validation by a hash of their path relative to the library
folder, so the split does not depend on the order the file system lists them in, and a file
never contributes to both. Batches are windows at offsets drawn from (seed, step) alone: the
data a step sees is a function of its index, which makes resumed runs see what an
uninterrupted run would have seen."""

import functools
import os
import sysconfig
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

VOCAB = 256  # bytes


def stdlib_dir() -> Path:
    """The standard library folder of this interpreter (where `os` lives)."""
    return Path(sysconfig.get_paths().get("stdlib") or os.path.dirname(os.__file__))


def is_validation(rel_path: str, percent: int) -> bool:
    return zlib.crc32(rel_path.encode()) % 100 < percent


class Corpus(NamedTuple):
    train: np.ndarray       # uint8, the training files concatenated (in sorted path order)
    valid: np.ndarray       # uint8, the validation files concatenated
    train_files: int
    valid_files: int
    root: str


@functools.lru_cache(maxsize=2)
def load_corpus(root=None, valid_percent=5) -> Corpus:
    """Reads every `.py` file under the standard library (site-packages and other installed
    packages excluded) and splits them by file: about `valid_percent` % go to validation.
    Cached: the arrays are shared between calls, and must not be written to."""
    root = Path(root) if root is not None else stdlib_dir()
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if "site-packages" in rel.split("/") or "dist-packages" in rel.split("/"):
            continue
        files.append(rel)
    files.sort()
    train, valid = [], []
    for rel in files:
        try:
            data = (root / rel).read_bytes()
        except OSError:
            continue  # an unreadable file is not part of the corpus
        (valid if is_validation(rel, valid_percent) else train).append(data)
    if not train or not valid:
        raise ValueError(f"no Python sources to train on under {root} "
                         f"({len(train)} training and {len(valid)} validation files)")
    # A newline between files, so that one file's end does not run into the next's start.
    join = lambda parts: np.frombuffer(b"\n".join(parts), np.uint8)
    return Corpus(join(train), join(valid), len(train), len(valid), str(root))


def train_batch(corpus: Corpus, seed: int, step: int, batch: int, seq_len: int) -> np.ndarray:
    """(batch, seq_len + 1) int32 windows of the training bytes for step `step`: inputs are
    [:, :-1], targets [:, 1:]."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, corpus.train.size - seq_len - 1, size=batch)
    return _windows(corpus.train, starts, seq_len)


def valid_batches(corpus: Corpus, batches: int, batch: int, seq_len: int) -> np.ndarray:
    """(batches, batch, seq_len + 1) int32: fixed windows spread evenly over the validation
    bytes (the same for every run and optimizer)."""
    n = batches * batch
    last = corpus.valid.size - seq_len - 1
    if last < n:
        raise ValueError(f"the validation text ({corpus.valid.size} bytes) is too short for "
                         f"{n} windows of {seq_len + 1} bytes")
    starts = np.linspace(0, last, n).astype(np.int64)
    return _windows(corpus.valid, starts, seq_len).reshape(batches, batch, seq_len + 1)


def _windows(data, starts, seq_len):
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    return data[idx].astype(np.int32)
