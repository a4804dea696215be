"""A run folder, written and read back, and the commands on finished runs (no Ray).

- :mod:`sah.runs.folder`: the folder itself (``run.yaml``, locks, refusals to overwrite);
- :mod:`sah.runs.artefacts`: weight files a run's configs need;
- :mod:`sah.runs.outputs`: one module per file of a run (trials, Pareto, tuned configs, ...);
- commands: :mod:`~sah.runs.compare`, :mod:`~sah.runs.export`, :mod:`~sah.runs.transfer`,
  :mod:`~sah.runs.allocate` and :mod:`~sah.runs.allocation_report` (``sah allocate``).

Importing this package loads nothing else.
"""
