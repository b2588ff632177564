"""Model files for the training side; the code lives in :mod:`conformer.model_io`.

Kept so that training scripts written against ``conformer.train.export`` keep working; new
code imports from ``conformer.model_io`` (which, unlike this package, needs no Lightning).
"""

from conformer.model_io import (  # noqa: F401 - re-exported names
    BUNDLED_MODEL,
    CHECKPOINT_FORMAT,
    MODEL_FORMAT,
    export_checkpoint,
    load_model,
    save_model,
)
