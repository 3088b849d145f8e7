"""Where downstream Cython builds find gradclip's ``.pxd`` (see :mod:`gradclip.cython_api`)."""

from __future__ import annotations

import os

__all__ = ["get_include"]


def get_include() -> str:
    """The directory to put on Cython's include path to ``cimport gradclip.cython_api``.

    It is the directory that holds the installed ``gradclip`` package, so Cython finds
    ``gradclip/cython_api.pxd`` there. Only Cython needs it: the generated C includes no
    gradclip header and links nothing of gradclip's.

    Examples
    --------
    In a downstream ``setup.py``:

    >>> from Cython.Build import cythonize  # doctest: +SKIP
    >>> import gradclip
    >>> include = [gradclip.get_include()]  # doctest: +SKIP
    >>> ext_modules = cythonize("mymod.pyx", include_path=include)  # doctest: +SKIP
    """
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
