"""The tokenized corpus: one token stream cut into packed binary shards, with an index that names its inputs.

Documents are concatenated in manifest order, each followed by `<|eos|>`, so no token is padding. Shards are
raw little-endian uint16 (uint32 when the vocabulary needs it) read through numpy memmaps; the index records
each shard's token count and sha256 and the fingerprints of the corpus and tokenizer that made them, so a
stale shard set is rebuilt instead of trained on.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from moe_core.data.corpus import LocalDataset
from moe_core.data.tokenizer import EOS

INDEX_FILE = "index.json"
DEFAULT_SHARD_TOKENS = 1 << 24


class ShardError(ValueError):
    """A shard set that is missing, stale or damaged."""


class ShardInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str
    n_tokens: int
    sha256: str


class ShardIndex(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dtype: str
    vocab_size: int
    total_tokens: int
    n_documents: int
    dataset_fingerprint: str
    tokenizer_sha256: str
    shards: list[ShardInfo]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_shards(
    dataset: LocalDataset,
    tokenizer,
    tokenizer_path: Path,
    out_dir: Path,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
) -> ShardIndex:
    """Tokenize every file of ``dataset`` into ``out_dir``; the index is written last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = tokenizer.get_vocab_size()
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.uint32
    eos = tokenizer.token_to_id(EOS)
    shards: list[ShardInfo] = []
    buf: list[np.ndarray] = []
    buffered = 0

    def flush(arr: np.ndarray) -> None:
        name = f"shard-{len(shards):05d}.bin"
        arr.astype("<" + np.dtype(dtype).str[1:]).tofile(out_dir / name)
        shards.append(ShardInfo(file=name, n_tokens=len(arr), sha256=_sha256(out_dir / name)))

    paths = dataset.paths()
    for i in range(0, len(paths), 64):
        texts = [p.read_text(encoding="utf-8") for p in paths[i : i + 64]]
        for enc in tokenizer.encode_batch(texts, add_special_tokens=False):
            buf.append(np.asarray(enc.ids + [eos], dtype=dtype))
            buffered += len(enc.ids) + 1
        while buffered >= shard_tokens:
            stream = np.concatenate(buf)
            flush(stream[:shard_tokens])
            buf, buffered = [stream[shard_tokens:]], len(stream) - shard_tokens
    if buffered:
        flush(np.concatenate(buf))
    index = ShardIndex(
        dtype=np.dtype(dtype).name,
        vocab_size=vocab,
        total_tokens=sum(s.n_tokens for s in shards),
        n_documents=len(paths),
        dataset_fingerprint=dataset.fingerprint(),
        tokenizer_sha256=_sha256(tokenizer_path),
        shards=shards,
    )
    (out_dir / INDEX_FILE).write_text(index.model_dump_json(indent=2))
    return index


def read_index(out_dir: Path) -> ShardIndex | None:
    p = out_dir / INDEX_FILE
    if not p.is_file():
        return None
    return ShardIndex.model_validate(json.loads(p.read_text()))


def shards_match(
    index: ShardIndex | None, dataset: LocalDataset, tokenizer_path: Path, out_dir: Path
) -> bool:
    """True if the shards in ``out_dir`` were made from this corpus and tokenizer and are all present."""
    if index is None or index.dataset_fingerprint != dataset.fingerprint():
        return False
    if not tokenizer_path.is_file() or index.tokenizer_sha256 != _sha256(tokenizer_path):
        return False
    itemsize = np.dtype(index.dtype).itemsize
    return all(
        (out_dir / s.file).is_file() and (out_dir / s.file).stat().st_size == s.n_tokens * itemsize
        for s in index.shards
    )


class TokenStream:
    """The shards read as one contiguous token array; ``window(start, n)`` may span shard boundaries."""

    def __init__(self, out_dir: Path, index: ShardIndex, verify: bool = True):
        self.index = index
        self.maps = []
        for s in index.shards:
            path = out_dir / s.file
            if verify and _sha256(path) != s.sha256:
                raise ShardError(f"{path} fails its sha256 checksum: rebuild the shards")
            self.maps.append(np.memmap(path, dtype=np.dtype(index.dtype).newbyteorder("<"), mode="r"))
        self.starts = np.cumsum([0] + [s.n_tokens for s in index.shards]).tolist()
        self.total = self.starts[-1]

    def __len__(self) -> int:
        return self.total

    def window(self, start: int, n: int) -> np.ndarray:
        if start < 0 or start + n > self.total:
            raise IndexError(f"window [{start}, {start + n}) outside the stream of {self.total} tokens")
        parts = []
        while n > 0:
            k = bisect_right(self.starts, start) - 1
            off = start - self.starts[k]
            take = min(n, len(self.maps[k]) - off)
            parts.append(np.asarray(self.maps[k][off : off + take], dtype=np.int64))
            start, n = start + take, n - take
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
