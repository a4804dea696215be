"""Steps inside a run, around the Ray trials (none of them imports Ray): fitting HashAttention
(:mod:`~sah.tuning.steps.hash_fit`), validating picks in the model
(:mod:`~sah.tuning.steps.validation`) and allocating budgets (:mod:`~sah.tuning.steps.allocation`).
"""
