"""Needle-in-a-haystack retrieval inside the model (``sah validate --task``).

- :mod:`sah.inmodel.retrieval.tasks`: the tasks (``passkey``, ``niah``, ``niah_multikey``)
  and their seeded samples;
- :mod:`sah.inmodel.retrieval.decode`: dense prefill, then question and greedy decoding
  with the chain in every layer;
- :mod:`sah.inmodel.retrieval.results`: accuracy per (config, task, tokens), JSON, table;
- :func:`validate_retrieval`: configs x tasks x lengths with one dense prefill per sample.
"""

from sah.inmodel.retrieval.decode import MAX_NEW_TOKENS, Answer, Answerer
from sah.inmodel.retrieval.results import (DENSE, DENSE_FLOOR, UNSCORED, RetrievalEntry,
                                           RetrievalResults, SampleAnswer)
from sah.inmodel.retrieval.run import check_samples, validate_retrieval
from sah.inmodel.retrieval.tasks import TASKS, TEXT_TASKS, Sample, TaskBuilder, depths

__all__ = ["MAX_NEW_TOKENS", "Answer", "Answerer", "DENSE", "DENSE_FLOOR", "UNSCORED",
           "RetrievalEntry", "RetrievalResults", "SampleAnswer", "check_samples",
           "validate_retrieval", "TASKS", "TEXT_TASKS", "Sample", "TaskBuilder", "depths"]
