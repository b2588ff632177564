"""Reproducible experiments behind ``conformer reproduce`` (each a module with ``run(args)``)."""
