"""Ray Tune studies over recordings: the only part of sah that imports Ray.

- :mod:`sah.tuning.study`: YAML studies and their validation;
- :mod:`sah.tuning.runner`: :func:`run_study` (``sah tune``);
- :mod:`sah.tuning.outputs`: the files of a run; :mod:`sah.tuning.compare`,
  :mod:`sah.tuning.export`: reading runs back.
"""

from sah.tuning.runner import RunInterrupted, RunOptions, run_study
from sah.tuning.study import Study, load_study, parse_study

__all__ = ["RunOptions", "RunInterrupted", "run_study", "Study", "load_study", "parse_study"]
