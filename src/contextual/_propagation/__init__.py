"""Propagation: snapshots of the registered stores, and the carried format.

A snapshot carries every propagating store into threads, pools and other
processes; the wire module owns the one format of context that crosses a
process boundary.
"""
