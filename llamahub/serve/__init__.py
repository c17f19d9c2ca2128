"""``llamahub serve``: an OpenAI-compatible HTTP server over loaded models.

``engine`` schedules requests onto a model (continuous batching over a backend's slot decoder,
else one request at a time through its generator); ``app`` is the FastAPI app. The models are
loaded by the command line (``llamahub.cli_serve``, through ``llamahub.load`` and its gates) and
handed in: this package never loads, downloads or checks a license itself.
"""
