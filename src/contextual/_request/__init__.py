"""The request context and the logging filter that puts it into log records.

Built on the core (its public API, backends and scope entry); imports
nothing of propagation, the helpers or the integrations, which open
requests through :func:`contextual._request.request.open_request`.
"""
