"""The chat template: how a list of chat messages becomes the prompt the model was trained on.

One definition for both sides: the API (preprocessing, in the Lambda layer) and the inference worker render
exactly the same prompt.

    <|bos|><|system|>{system}<|eos|><|user|>{user}<|eos|><|assistant|>{assistant}<|eos|>...<|assistant|>

Each message is its role's special token, the content, then `<|eos|>`; the prompt ends with `<|assistant|>` so
the model writes the reply and ends it with `<|eos|>`, which stops generation.
"""

from __future__ import annotations

ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
BOS, EOS = "<|bos|>", "<|eos|>"


def render_chat(messages: list[tuple[str, str]]) -> str:
    """[(role, content), ...] -> the prompt text, ending with the assistant's turn marker."""
    parts = [BOS]
    for role, content in messages:
        if role not in ROLE_TOKENS:
            raise ValueError(f"unknown chat role {role!r}; expected one of {sorted(ROLE_TOKENS)}")
        parts.append(f"{ROLE_TOKENS[role]}{content}{EOS}")
    parts.append(ROLE_TOKENS["assistant"])
    return "".join(parts)
