"""Bundled tasks. Each module exposes ``make_task(**params) -> autoslim.Task``."""
