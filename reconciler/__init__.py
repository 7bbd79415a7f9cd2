"""reconciler: a declarative, self-healing process reconciler for Linux."""

__version__ = "0.1.0"
