"""What a study is: YAML turned into checked dataclasses before anything runs (no Ray).

- :mod:`sah.study.spec`: the dataclasses (masker, chain, sections, study);
- :mod:`sah.study.parse`: :func:`~sah.study.parse.load_study`, :func:`~sah.study.parse.parse_study`;
- section parsers: :mod:`~sah.study.space` (search domains), :mod:`~sah.study.recordings`,
  :mod:`~sah.study.fit_options`, :mod:`~sah.study.allocate`, :mod:`~sah.study.validate`,
  :mod:`~sah.study.trial_resources`, and study-wide :mod:`~sah.study.checks`.

Importing this package loads nothing else; the parsers load the masker library (torch).
"""
