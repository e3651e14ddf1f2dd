"""The error an integration raises when the library it integrates with is missing."""

from __future__ import annotations

__all__ = ["missing_library"]


def missing_library(module: str, library: str, extra: str, error: ImportError) -> ImportError:
    """Return the :class:`ImportError` for ``module`` when importing ``library`` failed.

    It names the extra that installs the library, so the fix is one line;
    raise it ``from error``.
    """
    msg = (
        f"{module} needs {library}, which is not installed here: install it with the "
        f"{extra!r} extra (pip install 'contextual[{extra}]')."
    )
    return ImportError(msg, name=error.name)
