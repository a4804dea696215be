"""Ray Tune studies over recordings: the only part of sah that imports Ray.

- :mod:`sah.study.parse`: YAML studies and their validation;
- :mod:`sah.tuning.runner`: :func:`run_study` (``sah tune``);
- :mod:`sah.runs.outputs`: the files of a run; :mod:`sah.runs.compare`,
  :mod:`sah.runs.export`: reading runs back.
"""

from sah.tuning.runner import RunInterrupted, RunOptions, run_study
from sah.study.spec import Study
from sah.study.parse import load_study, parse_study

__all__ = ["RunOptions", "RunInterrupted", "run_study", "Study", "load_study", "parse_study"]
