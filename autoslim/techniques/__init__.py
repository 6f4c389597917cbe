"""Technique families. Importing this package registers every stage kind, its handler and
its search-space component; each family lives in one module (config + suggest + apply)."""

from autoslim.techniques import distill, prune, quantize, storage, structured  # noqa: F401
