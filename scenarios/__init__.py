"""Scenario files: their schema (``model``, with each suite's section in its own module) and loader.

Nothing else of virtproof is imported here but ``virtproof.core``.
"""
