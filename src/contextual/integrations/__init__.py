"""Integrations with other libraries and servers, each imported on demand.

``import contextual`` never imports this package or its modules; each
module here imports the library it integrates with only if it needs it, and
those libraries come with the matching extra (``pip install
"contextual[structlog]"``).
"""

from ._carrier import AllowSpec

__all__ = ["AllowSpec"]
