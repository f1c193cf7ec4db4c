"""Turn users' data into manifests: ``tumoraware prepare nsclc``, ``msd`` and ``mri``.

Each command lists the data where it is (converting only what must be converted, e.g. DICOM MRI
to NIfTI), writes a manifest only once it passes
:func:`tumoraware.data.manifest.validate_manifest` with ``deep=True``, and
fails with :class:`PrepareError` (a ``ValueError``) or :class:`MissingInputError` (a
``FileNotFoundError``) whose message names the file and the fix.
"""

from ._common import MissingInputError, PrepareError
from .mri import prepare_mri
from .msd import prepare_msd
from .nsclc import prepare_nsclc

__all__ = ["MissingInputError", "PrepareError", "prepare_mri", "prepare_msd", "prepare_nsclc"]
