"""Evaluation: RMSD engine (``rmsd``), COV/MAT (``metrics``), validity, the SDF evaluator.

Calling the package, ``conformer.evaluate(generated, references, threshold=0.75)``, runs the
Python API's :func:`conformer.api.evaluate` on Mols in memory. The package itself is made
callable (rather than a function named ``evaluate`` beside it) because importing any
``conformer.evaluate.*`` module binds the package to ``conformer.evaluate``, which would
replace such a function.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        """``conformer.api.evaluate(generated, references, threshold=0.75, workers=1)``."""
        from conformer.api import evaluate

        return evaluate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
