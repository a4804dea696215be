"""Infrastructure every layer uses, nothing sah-specific about attention:

- :mod:`sah.infra.checks`: field checks and :class:`ConfigError` (one clear line per refusal);
- :mod:`sah.infra.safe_yaml`: YAML reading that refuses aliases bombs, deep nesting, duplicates;
- :mod:`sah.infra.files`: atomic writes (temporary file, fsync, rename);
- :mod:`sah.infra.pickle_opt_in`: the explicit opt-in for pickled weight files;
- :mod:`sah.infra.threads`: torch thread counts for a block of work; independent chunks of a
  call on a few Python threads.
"""
