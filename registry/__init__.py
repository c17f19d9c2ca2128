"""Registry data (TOML files) shipped as package data; no code."""
