"""Loads the private extension replay._C, and says what is missing when it is not there.

Only replay/ops.py and replay/sampling.py call _C. `import replay` never fails because of it.
"""
_C = None
_ERR = None

try:  # pragma: no cover - exercised by every test that runs a kernel
    from replay import _C as _C  # noqa: F401
except ImportError as e:  # the package was imported from a source tree that was never built
    _ERR = e


def C():
    """The extension module, or a clear error that says how to build it."""
    if _C is None:
        raise RuntimeError(
            "replay._C is not built (" + str(_ERR) + "). Build it with `pip install -e .` "
            "or `python setup.py build_ext --inplace` from the repository root.")
    return _C
