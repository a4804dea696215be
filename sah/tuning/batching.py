"""Batched trials: one Ray trial scores several configurations of a grid or random chain.

Ray Tune costs a fixed amount per trial (scheduling, actor calls, result processing,
experiment-state bookkeeping: about 0.3 s with reused actors on 2 CPU cores), comparable
to scoring one configuration. Grid and random searchers do not learn from results, so
their configurations can be decided up front and scored several per trial:

- :func:`chain_param_sets` enumerates the grid and draws the random samples in the driver
  with a ``numpy`` generator seeded by the study seed and the chain's position, in Ray's
  order (for each sample, every grid point, the first grid domain varying fastest). The
  configurations do not depend on the batch size: batching only groups them.
- :func:`split_batches` cuts them into batches of at most ``configs_per_trial``, sizes
  differing by at most one, so the last Ray trial is not a short straggler.
- :func:`batched_param_space` turns the batches of every batched chain of a study into
  one ``tune.grid_search`` value per batch (``{chain, index, first, params}``), run as ONE
  Ray experiment: the worker actors (their imports and cached layer contexts) then serve
  every chain, and no slot idles at the end of each chain. Every Ray trial carries the
  parameters it scores, so its stored config alone says what it scored (``collect_rows``
  reads it back).

A batch is atomic: its trial reports once, after the last configuration, so a run stopped
mid-batch scores the whole batch again on resume and never keeps half of it. A
configuration that raises is recorded as failed with its message; the others still run.
"""

from __future__ import annotations

import itertools
from typing import Any, Dict, List, Tuple

import numpy as np

from sah.study.spec import ChainSpec

BATCH_KEY = "batch"  # trial parameter holding {chain, index, first, params: [...]}
BATCHED_EXPERIMENT = "_batched"  # its folder under <run>/ray (no chain name starts with "_")


def chain_param_sets(chain: ChainSpec, seed: int, chain_index: int) -> List[Dict[str, Any]]:
    """Every configuration's parameters ``{name: value}`` of a grid or random chain; the
    draws depend only on the study ``seed`` and the chain's position ``chain_index``."""
    if chain.searcher not in ("grid", "random"):
        raise ValueError(f"chain {chain.name}: a {chain.searcher} chain is not batched")
    domains = chain.domains
    as_grid = [n for n, d in domains.items()
               if d.kind == "grid" or (chain.searcher == "grid" and d.kind == "choice")]
    sampled = [n for n in domains if n not in as_grid]
    # Ray's grid order: the first grid domain varies fastest.
    points = [tuple(reversed(p)) for p in
              itertools.product(*[domains[n].values for n in reversed(as_grid)])]
    rng = np.random.default_rng([int(seed), int(chain_index)])
    out: List[Dict[str, Any]] = []
    for _ in range(chain.num_samples):
        for point in points:
            params = dict(zip(as_grid, point))
            for name in sampled:
                params[name] = domains[name].sample(rng)
            out.append({name: params[name] for name in domains})
    return out


def split_batches(items: List[Any], max_size: int) -> List[List[Any]]:
    """Consecutive batches of at most ``max_size`` items, sizes differing by at most one."""
    if not items:
        return []
    count = -(-len(items) // max(1, int(max_size)))
    small, extra = divmod(len(items), count)
    batches, start = [], 0
    for i in range(count):
        size = small + (i < extra)
        batches.append(items[start:start + size])
        start += size
    return batches


def chain_batches(chain: ChainSpec, seed: int, chain_index: int) -> List[Dict[str, Any]]:
    """The chain's batches: ``{chain, index, first (trial index of its first configuration),
    params (one ``{name: value}`` per configuration)}``."""
    batches, first = [], 0
    for index, params in enumerate(split_batches(chain_param_sets(chain, seed, chain_index),
                                                 chain.configs_per_trial)):
        batches.append({"chain": chain.name, "index": index, "first": first, "params": params})
        first += len(params)
    return batches


def batched_param_space(chains: List[Tuple[int, ChainSpec]], seed: int) -> Dict[str, Any]:
    """The param space of the experiment that runs the batches of ``chains`` (``(position
    in the study, chain)`` pairs): one grid point per batch, chain after chain."""
    from ray import tune
    batches = [b for index, chain in chains for b in chain_batches(chain, seed, index)]
    return {BATCH_KEY: tune.grid_search(batches)}
