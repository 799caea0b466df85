"""Turn OpenAI chat messages and completion prompts into the token ids the model sees."""

from __future__ import annotations

from typing import Any

# For tokenizers without a chat template (base models such as GPT-2): one "role: content"
# line per message, then "assistant:" to prompt the reply. Documented in docs/local_backend.md.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] + ': ' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the chat template applied to ``messages`` with the generation prompt.

    The template is rendered to text and tokenized without adding special tokens, because
    templates write their own BOS (adding it again would double it, as vLLM also avoids).
    """
    template = None if getattr(tokenizer, "chat_template", None) else FALLBACK_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template(
        messages, chat_template=template, add_generation_prompt=True, tokenize=False
    )
    return list(tokenizer.encode(text, add_special_tokens=False))


def completion_prompt_ids(tokenizer: Any, prompt: str | list[int]) -> list[int]:
    """A completion prompt: text is tokenized with the model's special tokens (BOS), as vLLM
    does; a token array is taken as is."""
    if isinstance(prompt, str):
        return list(tokenizer.encode(prompt, add_special_tokens=True))
    return list(prompt)
