"""Multi-objective search: experiments, the trial body, the local and Ray drivers.

``autoslim.search`` is both this package and the documented call
``autoslim.search("experiments/digits.yaml")``: once any submodule is imported, Python
binds the package itself to that name, so the package is made callable instead of
shadowing it with a function that would vanish on the first import.
"""

from __future__ import annotations

import sys
import types


class _CallableSearchPackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from autoslim.search.local import search

        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableSearchPackage
