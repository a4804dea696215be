"""The mask resource analysis of the seed's calculator: how many reads a mask's sparse
products need on a compute array (numpy and the standard library only, no torch).

- :mod:`sah.resources.calculator`: mask points, the greedy schedule, the analysis;
- :mod:`sah.resources.memory`: memory estimates and refusals before anything is allocated;
- :mod:`sah.resources.text`: the calculator's text and JSON output.

The calculator's names are re-exported here (``from sah.resources import analyse_mask``).
"""

from sah.resources.calculator import (ORDERS, PATTERN_NAMES, SEED_PATTERNS, ChangeFigure,
                                      MaskPoints, MaxCase, ResourceAnalysis, Schedule,
                                      analyse_mask, analyse_pattern, analyse_points,
                                      check_analysis_parameters, check_pattern_memory,
                                      greedy_schedule, pattern_num_active, pattern_points,
                                      points_from_coords, points_from_dense)

__all__ = ["ORDERS", "PATTERN_NAMES", "SEED_PATTERNS", "ChangeFigure", "MaskPoints", "MaxCase",
           "ResourceAnalysis", "Schedule", "analyse_mask", "analyse_pattern", "analyse_points",
           "check_analysis_parameters", "check_pattern_memory", "greedy_schedule",
           "pattern_num_active", "pattern_points", "points_from_coords", "points_from_dense"]
