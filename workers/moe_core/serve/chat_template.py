"""The chat template the worker applies: defined once in moe_control.chat_template, which the API's
preprocessing (the torch-free Lambda layer) uses too, so both render the same prompt."""

from moe_control.chat_template import BOS, EOS, ROLE_TOKENS, render_chat

__all__ = ["BOS", "EOS", "ROLE_TOKENS", "render_chat"]
