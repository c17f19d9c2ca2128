"""Thirty varied strings that tokenizer comparisons (llama.cpp's, transformers') run over: spaces,
newlines, scripts, emoji, code, numbers, and text that looks like special tokens."""

STRINGS = [
    "Hello world", " Hello world", "hello  world", "Hello\nworld", "\n\n\nthree newlines", "tab\tseparated",
    "  leading spaces", "trailing spaces   ", "", " ", "a", "The quick brown fox jumps over the lazy dog.",
    "12345678901234567890", "3.14159 and 2.71828", "Ünïcödé façade naïve café", "日本語のテキストです",
    "中文字符和English混合", "Привет, мир!", "emoji 🦙🦙 and 👩‍👩‍👧", "don't won't it's we're they'll I'd",
    "CAPS LOCK IS ON", "snake_case_identifier = some_function(arg1, arg2)",
    "def f(x):\n    return x ** 2\n", "<s> [INST] not special [/INST] </s>", "<|eot_id|> typed by a user",
    "https://example.com/path?query=1&b=2", "a\r\nwindows\r\nline", "!!!???...,,,;;;",
    "mixed   \n  whitespace \t\n", "The lighthouse keeper wrote in her logbook every evening.",
]
