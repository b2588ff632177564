"""conformer: 3D conformer generation with an E(3)-equivariant diffusion model and RECM.

The Python API (``conformer/api.py``)::

    import conformer
    mols = conformer.generate(["CCO", "c1ccccc1O"], num_confs=10, seed=0)
    model = conformer.load_model()            # the bundled model, reusable across calls
    scores = conformer.evaluate(mols, references)

The API is imported on first use, so ``import conformer`` (and the CLI's ``--help``) stays
light; ``conformer.evaluate`` is the ``conformer.evaluate`` package, callable as the API's
``evaluate`` function.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate", "generate", "load_model"]


def __getattr__(name: str):
    if name in ("generate", "load_model"):
        from conformer import api

        value = getattr(api, name)
        globals()[name] = value  # later lookups skip this hook
        return value
    if name == "evaluate":
        import importlib

        return importlib.import_module("conformer.evaluate")
    raise AttributeError(f"module 'conformer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
