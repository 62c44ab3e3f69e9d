"""One module per ``virtproof`` sub-command; each has ``register(subparsers)``."""
