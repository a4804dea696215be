"""Speed beside error: a chain's measured latency against dense attention
(:mod:`~sah.speed.timing`), its masks' block density and bytes read per decoded token
(:mod:`~sah.speed.traffic`), on the machine described by :mod:`~sah.speed.machine`.
:mod:`~sah.speed.measure` gives one config's figures on a recording (the study step
:mod:`sah.tuning.steps.speed` and ``sah speed`` use them)."""

from sah.speed.machine import cpu_model, describe_machine, gpu_name, machine_line
from sah.speed.measure import TRAFFIC_FIGURES, latency, recording_shape, traffic_figures
from sah.speed.timing import (DTYPES, DecodeShape, DecodeTensors, Timing, chain_call,
                              decode_tensors, dense_call, recorded_tensors, time_chain,
                              time_interleaved)
from sah.speed.traffic import (BLOCKS, KV_BITS, block_density, bytes_ratio, key_reading,
                               mask_traffic)

__all__ = ["BLOCKS", "DTYPES", "DecodeShape", "DecodeTensors", "KV_BITS", "TRAFFIC_FIGURES",
           "Timing", "block_density", "bytes_ratio", "chain_call", "cpu_model",
           "decode_tensors", "dense_call", "describe_machine", "gpu_name", "key_reading",
           "latency", "machine_line", "mask_traffic", "recorded_tensors", "recording_shape",
           "time_chain", "time_interleaved", "traffic_figures"]
