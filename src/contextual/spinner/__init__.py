"""A terminal spinner that stops at once and keeps CI logs clean.

::

    from contextual.spinner import Spinner

    with Spinner("Loading data") as spinner:
        load()
        spinner.text = "Indexing"
        index()

On an interactive terminal a daemon thread animates the frames; in pipes,
files and CI logs the spinner writes one start line and one final line.
:class:`SpinnerHandler` prints log records above a running spinner.

.. versionadded:: 0.2.0
   The module; before, these names were imported from :mod:`contextual`.
"""

from contextual._core.publish import publish_all

from ._spinner import Spinner, SpinnerHandler

__all__ = ["Spinner", "SpinnerHandler"]

publish_all(globals())
