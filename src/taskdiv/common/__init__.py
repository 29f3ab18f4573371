"""Plumbing every stage shares: errors, atomic output, bounded readers, serialisers, the
cache directory and its locks, configs, progress bars, optional packages, secrets masked.

Nothing here knows the pipeline; every other package may import it.
"""
