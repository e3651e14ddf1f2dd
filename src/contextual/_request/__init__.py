"""The request context and the logging filter that puts it into log records.

Built on the core's public API; imports nothing of propagation, the helpers
or the integrations.
"""
