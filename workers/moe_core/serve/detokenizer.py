"""Token ids to text as they arrive: the tokenizer wrapper, incremental decoding and stop strings.

Byte-level BPE can split one UTF-8 character across tokens, so text that ends in a replacement character is
held back until the next token completes it; text that could be the start of a stop string is held back too,
so a stream never shows a client text past a stop.
"""

from __future__ import annotations

from pathlib import Path

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>")


class TokenizerError(ValueError):
    """The model's tokenizer is missing, or lacks a special token the server needs."""


class Tokenizer:
    """The model's own `tokenizer.json` (Hugging Face tokenizers)."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"no tokenizer at {path}")
        self.hf = HFTokenizer.from_file(str(path))
        self.vocab_size = self.hf.get_vocab_size()
        self.eos_token_id = self.hf.token_to_id("<|eos|>")
        self.bos_token_id = self.hf.token_to_id("<|bos|>")
        if self.eos_token_id is None:
            raise TokenizerError(f"tokenizer {path} has no <|eos|> token")

    def encode(self, text: str) -> list[int]:
        # special tokens in the text (the chat template's) are parsed as such; no automatic BOS
        return self.hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=True)


class IncrementalDetokenizer:
    """Feeds on one request's output ids; `emit()` gives the new text that is safe to show."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str]):
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already given out
        self.text = ""
        self.stopped = False

    def add(self, token_id: int) -> None:
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids)
        for s in self.stop:
            at = self.text.find(s, max(0, self.sent - len(s)))
            if at != -1:
                self.text = self.text[:at]
                self.stopped = True
                return

    def emit(self, final: bool = False) -> str:
        end = len(self.text)
        if not (final or self.stopped):
            if self.text.endswith("\ufffd"):
                end -= 1
            # hold back a tail that might grow into a stop string
            for s in self.stop:
                for n in range(min(len(s) - 1, end), 0, -1):
                    if self.text[end - n : end] == s[:n]:
                        end -= n
                        break
        end = max(end, self.sent)
        out = self.text[self.sent : end]
        self.sent = end
        return out
