"""Get a run's data ready: the tokenizer (trained once, or the one a checkpoint carries) and its shards.

Everything lives under the run's data folder and is reused when its inputs have not changed, so a resumed
run neither retrains the tokenizer nor re-tokenizes the corpus.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from moe_core.data.corpus import LocalDataset
from moe_core.data.shards import ShardIndex, TokenStream, build_shards, read_index, shards_match
from moe_core.data.tokenizer import TOKENIZER_FILE, load_tokenizer, train_tokenizer

_TOKENIZER_META = "tokenizer.meta.json"


@dataclass
class PreparedData:
    dataset: LocalDataset
    tokenizer_path: Path
    shard_dir: Path
    index: ShardIndex

    def stream(self, verify: bool = True) -> TokenStream:
        return TokenStream(self.shard_dir, self.index, verify=verify)


def ensure_tokenizer(
    dataset: LocalDataset, data_dir: Path, vocab_size: int, given: Path | None = None
) -> Path:
    """The run's tokenizer.json: ``given`` (a checkpoint's) if passed, else the one already trained for this
    corpus and vocabulary size, else a new one trained on the corpus."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / TOKENIZER_FILE
    meta_path = data_dir / _TOKENIZER_META
    want = {"dataset": dataset.fingerprint(), "vocab_size": vocab_size}
    if given is not None:
        if given.read_bytes() != (path.read_bytes() if path.is_file() else b""):
            shutil.copyfile(given, path)
        meta_path.write_text(json.dumps({**want, "source": "checkpoint"}))
        return path
    if path.is_file() and meta_path.is_file():
        have = json.loads(meta_path.read_text())
        if have.get("dataset") == want["dataset"] and have.get("vocab_size") == vocab_size:
            load_tokenizer(path)  # raises if it is damaged
            return path

    def texts():
        for p in dataset.paths():
            yield p.read_text(encoding="utf-8")

    tok = train_tokenizer(texts(), vocab_size)
    tmp = path.with_suffix(".tmp")
    tok.save(str(tmp))
    tmp.replace(path)
    meta_path.write_text(json.dumps({**want, "source": "trained"}))
    return path


def ensure_shards(dataset: LocalDataset, tokenizer_path: Path, data_dir: Path) -> PreparedData:
    shard_dir = data_dir / "shards"
    index = read_index(shard_dir)
    if not shards_match(index, dataset, tokenizer_path, shard_dir):
        shutil.rmtree(shard_dir, ignore_errors=True)
        index = build_shards(dataset, load_tokenizer(tokenizer_path), tokenizer_path, shard_dir)
    return PreparedData(dataset, tokenizer_path, shard_dir, index)
