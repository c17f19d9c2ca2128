"""The llamahub hub server: accounts, license gates, signed download links, Meta's layout.

Importing this package is cheap: FastAPI, SQLAlchemy and uvicorn are imported by the modules
that need them (``app``, ``store``), never here.
"""
