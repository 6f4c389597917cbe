"""The built-in techniques, one family per package.

:func:`autoslim.registry.load_techniques` imports this list once; each family registers
its stage kinds, search-space components, handlers and weight codecs as it is imported.
A technique from another package is declared in the ``autoslim.techniques`` entry-point
group instead (see docs/adding_a_technique.md).
"""

from autoslim.techniques import distill, prune, quantize, storage, structured

__all__ = ["distill", "prune", "quantize", "storage", "structured"]
