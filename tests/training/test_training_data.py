"""The training data pipeline: corpus sources and their verification, tokenizer, shards, sampler."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import boto3
import numpy as np
import pytest

from moe_control.datasets import DatasetManifest
from moe_core.data.corpus import DatasetError, resolve_dataset, stdlib_sources, write_stdlib_dataset
from moe_core.data.prepare import ensure_shards, ensure_tokenizer
from moe_core.data.sampler import PackedSampler, SamplerError
from moe_core.data.shards import TokenStream
from moe_core.data.tokenizer import SPECIAL_TOKENS, load_tokenizer


def test_stdlib_subset_is_deterministic_and_bounded():
    a, b = stdlib_sources(200_000), stdlib_sources(200_000)
    assert [p for p, _ in a] == [p for p, _ in b]
    assert sum(len(d) for _, d in a) <= 200_000
    assert all(p.endswith(".py") and "/test/" not in f"/{p}" for p, _ in a)


def test_write_stdlib_dataset_writes_a_valid_manifest(tmp_path: Path):
    manifest = write_stdlib_dataset(tmp_path, 100_000, training={"preset": "tiny", "max_steps": 7})
    again = DatasetManifest.model_validate_json((tmp_path / "manifest.json").read_text())
    assert again == manifest and again.training.max_steps == 7
    ds = resolve_dataset(str(tmp_path), tmp_path / "staging")
    assert ds.root == tmp_path and len(ds.paths()) == len(manifest.files)


def test_a_file_that_fails_its_checksum_is_rejected(tmp_path: Path, corpus_dir: Path):
    shutil.copytree(corpus_dir, tmp_path / "c")
    first = json.loads((tmp_path / "c" / "manifest.json").read_text())["files"][0]["path"]
    target = tmp_path / "c" / first
    data = bytearray(target.read_bytes())
    data[0] ^= 1  # same size, different bytes
    target.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="sha256"):
        resolve_dataset(str(tmp_path / "c"), tmp_path / "staging")


def test_a_plain_folder_gets_a_manifest_in_memory(tmp_path: Path):
    (tmp_path / "a.txt").write_text("hello world\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("more text\n")
    ds = resolve_dataset(str(tmp_path), tmp_path / "staging")
    assert [f.path for f in ds.manifest.files] == ["a.txt", "sub/b.txt"]
    (tmp_path / "bad.bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DatasetError, match="not UTF-8"):
        resolve_dataset(str(tmp_path), tmp_path / "staging")


def test_unknown_data_argument_is_a_clear_error(tmp_path: Path):
    with pytest.raises(DatasetError, match="neither"):
        resolve_dataset(str(tmp_path / "nope"), tmp_path / "staging")


def test_s3_dataset_is_downloaded_and_verified(tmp_path: Path, corpus_dir: Path, s3_endpoint: str):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="data-ok")
    for p in corpus_dir.rglob("*"):
        if p.is_file():
            s3.upload_file(str(p), "data-ok", f"datasets/one/{p.relative_to(corpus_dir).as_posix()}")
    ds = resolve_dataset("s3://data-ok/datasets/one/", tmp_path / "staging", s3_client=s3)
    assert ds.fingerprint() == resolve_dataset(str(corpus_dir), tmp_path / "x").fingerprint()
    # A file changed in S3 after the manifest was written is caught by its checksum.
    first = ds.manifest.files[0].path
    s3.put_object(Bucket="data-ok", Key=f"datasets/one/{first}", Body=b"tampered")
    with pytest.raises(DatasetError, match=first.split("/")[-1]):
        resolve_dataset("s3://data-ok/datasets/one/", tmp_path / "staging2", s3_client=s3)


def test_tokenizer_is_byte_level_with_the_special_tokens(tmp_path: Path, corpus_dir: Path):
    ds = resolve_dataset(str(corpus_dir), tmp_path)
    path = ensure_tokenizer(ds, tmp_path / "data", 512)
    tok = load_tokenizer(path)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    text = "def f(x):\n    return 'héllo ✓' + x  # ünïcode\n"
    assert tok.decode(tok.encode(text).ids) == text
    # Trained once: a second call reuses the same file (same corpus, same vocabulary size).
    mtime = path.stat().st_mtime_ns
    assert ensure_tokenizer(ds, tmp_path / "data", 512) == path and path.stat().st_mtime_ns == mtime


def test_shards_hold_every_document_and_windows_cross_shard_boundaries(tmp_path: Path, corpus_dir: Path):
    from moe_core.data.shards import build_shards

    ds = resolve_dataset(str(corpus_dir), tmp_path)
    tok_path = ensure_tokenizer(ds, tmp_path / "data", 512)
    tok = load_tokenizer(tok_path)
    small = build_shards(ds, tok, tok_path, tmp_path / "small", shard_tokens=1000)
    big = ensure_shards(ds, tok_path, tmp_path / "data").index
    assert len(small.shards) > 3 and len(big.shards) == 1
    assert small.total_tokens == big.total_tokens
    eos = tok.token_to_id("<|eos|>")
    one = TokenStream(tmp_path / "data" / "shards", big)
    many = TokenStream(tmp_path / "small", small)
    assert int((one.window(0, len(one)) == eos).sum()) == len(ds.manifest.files)
    np.testing.assert_array_equal(many.window(990, 25), one.window(990, 25))
    first_doc = ds.paths()[0].read_text()
    assert tok.decode(one.window(0, 40).tolist()) == tok.decode(tok.encode(first_doc).ids[:40])


def _sampler(tmp_path: Path, corpus_dir: Path, seq_len=16, seed=0) -> PackedSampler:
    ds = resolve_dataset(str(corpus_dir), tmp_path)
    data = ensure_shards(ds, ensure_tokenizer(ds, tmp_path / "data", 512), tmp_path / "data")
    return PackedSampler(data.stream(), seq_len, seed)


def test_sampler_resumes_exactly_from_its_state(tmp_path: Path, corpus_dir: Path):
    a = _sampler(tmp_path, corpus_dir)
    for _ in range(5):
        a.next_batch(8)
    saved = json.loads(json.dumps(a.state_dict()))
    expected = [a.next_batch(8)[0] for _ in range(3)]
    b = _sampler(tmp_path, corpus_dir)
    b.load_state_dict(saved)
    for want in expected:
        np.testing.assert_array_equal(b.next_batch(8)[0], want)


def test_sampler_targets_are_inputs_shifted_and_ranks_split_the_global_batch(
    tmp_path: Path, corpus_dir: Path
):
    x, y = _sampler(tmp_path, corpus_dir).next_batch(8)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    parts = [_sampler(tmp_path, corpus_dir).next_batch(8, rank=r, world_size=2)[0] for r in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), x)
    with pytest.raises(SamplerError, match="split evenly"):
        _sampler(tmp_path, corpus_dir).next_batch(7, rank=0, world_size=2)


def test_sampler_visits_every_window_once_per_epoch(tmp_path: Path, corpus_dir: Path):
    s = _sampler(tmp_path, corpus_dir, seq_len=256)
    n = s.state.n_windows
    seen = s.next_global_indices(n)
    assert sorted(seen.tolist()) == list(range(n)) and s.state.epoch == 1 and s.state.cursor == 0
    assert s.next_global_indices(n).tolist() != seen.tolist()  # a new order in the next epoch


def test_sampler_refuses_a_state_from_other_data(tmp_path: Path, corpus_dir: Path):
    saved = _sampler(tmp_path, corpus_dir, seq_len=16).state_dict()
    with pytest.raises(SamplerError, match="seq_len"):
        _sampler(tmp_path, corpus_dir, seq_len=32).load_state_dict(saved)
