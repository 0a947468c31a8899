"""Preprocessing in moe_control, without HTTP: the copied chat template and request fields agree with the
worker's, the prefix hash follows the worker's cache blocks, routing by it is stable, and the tokenizer is
re-read when its file changes in S3."""

from __future__ import annotations

import annotated_types
import pytest
from hypothesis import given
from hypothesis import strategies as st

from moe_control import api_models, preprocess

LIMITS = preprocess.Limits(
    max_prompt_tokens=2048, max_output_tokens=512, prefix_hash_tokens=64, block_tokens=16
)

roles = st.sampled_from(["system", "user", "assistant"])
texts = st.text(max_size=40)


def test_the_api_and_the_worker_share_one_chat_template():
    from moe_core.serve.chat_template import render_chat as worker_render

    assert preprocess.render_chat is worker_render  # one definition: moe_control.chat_template


@given(st.lists(st.tuples(roles, texts), max_size=6))
def test_the_chat_template_marks_every_turn_and_ends_on_the_assistant(messages):
    prompt = preprocess.render_chat(messages)
    assert prompt.startswith("<|bos|>") and prompt.endswith("<|assistant|>")
    assert prompt.count("<|eos|>") >= len(messages)


def test_an_unknown_chat_role_is_refused():
    with pytest.raises(ValueError, match="unknown chat role 'tool'"):
        preprocess.render_chat([("tool", "x")])


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (api_models.CompletionRequest, "CompletionRequest"),
        (api_models.ChatCompletionRequest, "ChatCompletionRequest"),
        (api_models.ChatMessage, "ChatMessage"),
        (api_models.Usage, "Usage"),
    ],
)
def test_the_api_accepts_the_same_request_fields_as_the_worker(ours, theirs):
    from moe_core.serve import protocol

    worker = getattr(protocol, theirs)
    assert set(ours.model_fields) == set(worker.model_fields)
    for name, field in ours.model_fields.items():
        assert field.default == worker.model_fields[name].default, name
        if (
            name == "seed"
        ):  # the API keeps seeds exact as JSON numbers (<= 2**53 - 1), within the worker's range
            assert [type(b) for b in _bounds(field)] == [annotated_types.Ge, annotated_types.Le]
            assert field.metadata[1].le < worker.model_fields[name].metadata[1].lt
            continue
        assert _bounds(field) == _bounds(worker.model_fields[name]), name


def _bounds(field) -> list:
    return [m for m in field.metadata if isinstance(m, annotated_types.BaseMetadata)]  # ge/le/gt/lt


def test_the_worker_body_keeps_every_sampling_field_the_worker_reads():
    from moe_core.serve import protocol

    req = api_models.CompletionRequest(prompt=[1, 2], stop="x", seed=3, temperature=0.5)
    body = {"prompt": [1, 2], **req.sampling()}
    parsed = protocol.CompletionRequest.model_validate(body)
    assert (parsed.stop, parsed.seed, parsed.temperature, parsed.prompt) == (["x"], 3, 0.5, [1, 2])
    assert set(body) == set(protocol.CompletionRequest.model_fields) - {"model", "n"}


# ------------------------------------------------------------------------------------------- prefix hash, routing
def test_prompts_sharing_their_whole_blocks_share_the_prefix_hash():
    shared = list(range(100, 132))  # two whole blocks
    a = preprocess.prefix_hash(shared + [1, 2, 3], LIMITS)
    b = preprocess.prefix_hash(shared + [9, 9, 9, 9, 9], LIMITS)
    assert a == b
    assert preprocess.prefix_hash([7] + shared[1:] + [1, 2, 3], LIMITS) != a


def test_only_the_first_prefix_hash_tokens_count():
    head = list(range(64))
    assert preprocess.prefix_hash(head + [1] * 50, LIMITS) == preprocess.prefix_hash(head + [2] * 90, LIMITS)


def test_the_last_prompt_token_is_not_part_of_the_prefix():
    # 32 tokens: the worker can share only the first block (the last token's logits are always computed).
    prompt = list(range(32))
    assert preprocess.prefix_hash(prompt, LIMITS) == preprocess.prefix_hash(prompt[:16] + [5] * 16, LIMITS)


def test_prompts_shorter_than_a_block_hash_whole_and_spread():
    assert preprocess.prefix_hash([1, 2, 3], LIMITS) != preprocess.prefix_hash([1, 2, 4], LIMITS)


def test_routing_by_prefix_hash_is_stable_and_moves_little_when_an_endpoint_goes():
    urls = [f"http://10.0.0.{i}:8000" for i in range(4)]
    hashes = [preprocess.prefix_hash([i] * 40, LIMITS) for i in range(400)]
    placed = {h: preprocess.pick_endpoint(urls, h) for h in hashes}
    assert placed == {h: preprocess.pick_endpoint(list(reversed(urls)), h) for h in hashes}
    counts = [list(placed.values()).count(u) for u in urls]
    assert min(counts) > 60, counts  # about 100 each
    fewer = urls[:3]
    moved = [h for h in hashes if placed[h] != urls[3] and preprocess.pick_endpoint(fewer, h) != placed[h]]
    assert moved == []


# ------------------------------------------------------------------------------------------- the tokenizer cache
def test_the_tokenizer_is_cached_and_reread_when_its_etag_changes(control_plane, tokenizer_json, monkeypatch):
    from moe_core.data.tokenizer import train_tokenizer

    s3 = control_plane.client("s3")
    key = "cached/tokenizer.json"
    s3.put_object(Bucket=control_plane.model_bucket, Key=key, Body=tokenizer_json.read_bytes())
    uri = f"s3://{control_plane.model_bucket}/cached"
    first = preprocess.tokenizer_for(uri)
    assert preprocess.tokenizer_for(uri) is first
    other = train_tokenizer(["abc def " * 50], vocab_size=300)
    s3.put_object(Bucket=control_plane.model_bucket, Key=key, Body=other.to_str().encode())
    assert preprocess.tokenizer_for(uri) is first  # within the re-check interval: no S3 call at all
    monkeypatch.setattr(preprocess, "TOKENIZER_RECHECK_S", 0.0)
    second = preprocess.tokenizer_for(uri)
    assert second is not first and second.vocab_size == other.get_vocab_size()
    assert preprocess.tokenizer_for(uri) is second  # same ETag: kept
