"""Multi-objective search: experiments, the trial body, the study's bookkeeping, runners.

- :mod:`~autoslim.searching.driver`: :func:`~autoslim.searching.driver.search`, the
  entry point (``autoslim.search`` and ``autoslim search``), which picks the runner.
- :mod:`~autoslim.searching.study`: open and resume a study, recover interrupted trials,
  record outcomes, count the budget; :mod:`~autoslim.searching.slots`: worker slots.
- :mod:`~autoslim.searching.record`: what a trial records (:class:`TrialRecord`).
- :mod:`~autoslim.searching.runner`: the runner interface, implemented by
  :mod:`~autoslim.searching.local` and :mod:`~autoslim.searching.ray_backend`.
- :mod:`~autoslim.searching.evaluate`: one trial, from suggested parameters to measured
  values; :mod:`~autoslim.searching.early_stop`: the stopping rule.

Nothing is imported here: :mod:`autoslim.run` reads run folders through
:mod:`autoslim.searching.record` without loading the search.
"""
