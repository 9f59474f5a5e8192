"""Chat prompts that end inside a partial assistant answer (no torch: the API teachers use it too)."""

from __future__ import annotations

# Rendered in place of the prefix, then swapped for it: templates may trim message content, and a
# prefix ending in a space or newline must reach the model exactly as written.
_MARK = "\u2063OMNIOPD-PREFILL\u2063"


def render_prompt(tokenizer, messages: list[dict[str, str]], prefix: str) -> str:
    """The chat template applied to `messages` plus an open assistant turn holding exactly `prefix`."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template")
    if not prefix:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    text = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": _MARK}],
                                         continue_final_message=True, tokenize=False)
    head, found, tail = text.rpartition(_MARK)
    if not found or tail.strip():
        raise ValueError("the chat template does not end with the assistant's partial message")
    return head + prefix
