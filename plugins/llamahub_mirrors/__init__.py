"""The in-tree mirror sources: ``s3`` (S3 and S3-compatible buckets) and ``azure-blob``.

Registered through the ``llamahub`` entry-point group exactly as a third party's sources would be.
Their libraries are optional extras (``llamahub[s3]``, ``llamahub[azure]``), imported only when a
mirror is used; without them the source says which extra to install.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llamahub.plugin import hookimpl
from llamahub_mirrors.azure import AzureBlobSource
from llamahub_mirrors.s3 import S3Source


@hookimpl
def register_sources(register: Callable[[Any], None]) -> None:
    register(S3Source())
    register(AzureBlobSource())
