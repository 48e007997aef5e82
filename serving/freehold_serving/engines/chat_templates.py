"""Chat templates for models whose GGUF carries none.

The GGUF's own `tokenizer.chat_template` always wins. Some conversions (the packaged
Gemma 3 270M among them) ship without it; for those we use the model family's
published template, keyed by `general.architecture`.
"""

from __future__ import annotations

# Gemma 3's template as published with the model, for text-only messages: a system
# message becomes a prefix of the first user turn; roles must alternate.
GEMMA3 = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {{- message['content'] | trim }}
    {{- '<end_of_turn>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

BY_ARCHITECTURE: dict[str, tuple[str, tuple[str, ...]]] = {
    # architecture: (template, stop strings)
    "gemma3": (GEMMA3, ("<end_of_turn>",)),
    "gemma2": (GEMMA3, ("<end_of_turn>",)),
    "gemma": (GEMMA3, ("<end_of_turn>",)),
}
