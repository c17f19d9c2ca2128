"""Chat templates in Jinja (GGUF's ``tokenizer.chat_template``, HF's ``chat_template``) for our chat formats.

Written to render exactly the prompt of ``llamahub.model.chat`` (the tests compare the two), so
a program that reads the GGUF's template builds the same prompt as llamahub does.
"""

from __future__ import annotations

LLAMA2 = (
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' -%}"
    "{%- set messages = messages[1:] -%}"
    "{%- else -%}{%- set first = '' -%}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- set text = (first if loop.first else '') + message['content'] -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{ bos_token + '[INST] ' + text | trim + ' [/INST]' }}"
    "{%- else -%}"
    "{{ ' ' + text | trim + ' ' + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

LLAMA3 = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' -}}"
    "{{- message['content'] | trim + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
    "{%- endif -%}"
)

# Code Llama 70B Instruct: renders the text of the official template of
# codellama/CodeLlama-70b-Instruct-hf (tests/model/test_codellama70b.py compares the two)
CODELLAMA70B = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- 'Source: ' + message['role'] + '\\n\\n ' + message['content'] | trim + ' <step> ' -}}"
    "{%- endfor -%}"
    "{{- 'Source: assistant\\nDestination: user\\n\\n ' -}}"
)

CHAT_TEMPLATES = {"llama2": LLAMA2, "llama3": LLAMA3, "codellama70b": CODELLAMA70B}
