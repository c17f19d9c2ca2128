"""``python -m llama_cpp.server`` as it is, except on a CPU with AMX: there llama-cpp-python
0.3.36's AMX weight buffers (llama.cpp's "extra" buffers) crash, so they are turned off, as the
llamacpp backend and bench_llamacpp.py do. Arguments are the server's own.

    python bench/llama_cpp_server.py --model FILE.gguf --port 8081 ...
"""

from __future__ import annotations

from typing import Any


def turn_off_amx_buffers() -> None:
    """On a CPU with AMX, make every ``llama_cpp.Llama`` made after this run without llama.cpp's
    AMX weight buffers (they crash there), as the llamacpp backend does."""
    import llama_cpp
    from llamahub_llamacpp.runtime import has_amx

    if not has_amx():
        return
    low = llama_cpp.llama_cpp  # the module Llama reads its defaults from
    default = low.llama_model_default_params

    def no_extra_buffers() -> Any:
        params = default()
        params.use_extra_bufts = False
        return params

    low.llama_model_default_params = no_extra_buffers


def main() -> None:
    from llama_cpp.server.__main__ import main as serve

    turn_off_amx_buffers()
    serve()


if __name__ == "__main__":
    main()
