"""Mask resource analysis (spec/RESOURCES.md): the greedy compute-array schedule of a 2-D mask.

A compute array does up to ``N`` multiplications per step (one query row times one key
column each) and holds at most ``R`` distinct rows + columns per step. The active points
of the mask are walked row-first (column-first = the transpose; zigzag: odd rows take
columns in descending order) and greedily packed into steps.

Speed: the walk is sequential, but inside one row the columns are distinct, so a row
segment is added with a handful of numpy calls (``cumsum`` of "column new to the step"
flags gives the read count of every prefix), and runs of steps that fit inside one row
are emitted in bulk. The loop therefore costs O(rows + steps spanning rows) numpy calls,
never O(points) Python operations, and memory is O(points + columns + steps).

This module imports only numpy and the standard library (plus ``sah.infra.checks`` and
``sah.resources.memory``), so scripts can use it without importing torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from sah.resources.memory import analysis_bytes, check_memory, rows_bytes
from sah.infra.checks import ConfigError

ORDERS = ("row_first", "column_first")
SEED_PATTERNS = ("normal", "strided", "fixed")
PATTERN_NAMES = ("normal", "strided", "fixed", "sliding_window", "dilated_sliding_window")


# --------------------------------------------------------------------------- points
@dataclass
class MaskPoints:
    """Active positions of a ``(rows, cols)`` mask in CSR form: row ``r`` holds the
    ascending columns ``cols[indptr[r]:indptr[r + 1]]``."""

    indptr: np.ndarray  # (rows + 1,) int64
    cols: np.ndarray    # (active,) int32 or int64, ascending within each row
    shape: Tuple[int, int]

    @property
    def num_active(self) -> int:
        return int(self.cols.size)

    def transpose(self) -> "MaskPoints":
        rows_of = np.repeat(np.arange(self.shape[0], dtype=np.int64), np.diff(self.indptr))
        keys = self.cols.astype(np.uint16) if self.shape[1] <= 65536 else self.cols
        order = np.argsort(keys, kind="stable")  # stable (radix for uint16): rows stay ascending
        counts = np.bincount(self.cols, minlength=self.shape[1])
        indptr = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        return MaskPoints(indptr, rows_of[order], (self.shape[1], self.shape[0]))


def points_from_dense(mask: Any) -> MaskPoints:
    """Points of a 2-D dense mask (numpy/torch bool or numbers; nonzero = active)."""
    array = _to_numpy(mask)
    if array.ndim != 2:
        raise ConfigError(f"mask: got {array.ndim}-D array of shape {array.shape}; expected a 2-D mask")
    rows, cols = np.nonzero(array)
    return points_from_coords(rows, cols, array.shape, presorted=True)


def points_from_coords(rows: Any, cols: Any, shape: Tuple[int, int],
                       presorted: bool = False) -> MaskPoints:
    """Points from coordinate arrays (duplicates are removed; sorted unless ``presorted``)."""
    rows = np.asarray(_to_numpy(rows), dtype=np.int64).ravel()
    cols = np.asarray(_to_numpy(cols), dtype=np.int64).ravel()
    n_rows, n_cols = int(shape[0]), int(shape[1])
    if rows.shape != cols.shape:
        raise ConfigError(f"points: rows ({rows.size}) and cols ({cols.size}) differ in length")
    if rows.size and (rows.min() < 0 or rows.max() >= n_rows or cols.min() < 0 or cols.max() >= n_cols):
        raise ConfigError(f"points: a coordinate lies outside the mask shape {(n_rows, n_cols)}")
    if not presorted:
        key = np.unique(rows * n_cols + cols)
        rows, cols = key // n_cols, key % n_cols
    indptr = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=n_rows)))).astype(np.int64)
    return MaskPoints(indptr, cols, (n_rows, n_cols))


def _to_numpy(x: Any) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _progressions(size: int, pieces: List[Tuple[np.ndarray, np.ndarray, np.ndarray]]) -> MaskPoints:
    """CSR of rows made of arithmetic progressions: piece ``(start, step, count)`` arrays over
    rows, concatenated per row in the given order (each must be ascending and disjoint)."""
    starts = np.stack([p[0] for p in pieces], 1).ravel()
    steps = np.stack([p[1] for p in pieces], 1).ravel()
    counts = np.maximum(np.stack([p[2] for p in pieces], 1).ravel(), 0)
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    total = int(offsets[-1])
    dtype = np.int32 if max(size, total) < 2**31 else np.int64  # half the memory traffic
    # value of the k-th point of a piece = start + step * k = (start - step * offset) + step * index
    cols = np.arange(total, dtype=dtype)
    if np.any(steps[counts > 0] != 1):
        cols *= np.repeat(steps.astype(dtype), counts)
    cols += np.repeat((starts - steps * offsets[:-1]).astype(dtype), counts)
    indptr = offsets[:: len(pieces)]
    return MaskPoints(indptr, cols, (size, size))


def _pattern_pieces(name: str, i: np.ndarray, size: int, window_size: int, stride: int,
                    dilation: int) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Rows ``i`` of a pattern as arithmetic progressions ``(start, step, count)``."""
    one, w = np.ones_like(i), window_size
    if name == "normal":
        return [(0 * i, one, i + 1)]
    if name == "strided":  # strided part j <= i - w, then band i - w < j <= i
        n_str = np.where(i >= w, (i - w) // stride + 1, 0)
        band_lo = np.maximum(i - w + 1, 0)
        return [(np.where(i >= w, (i - w) % stride, 0), one * stride, n_str),
                (band_lo, one, i - band_lo + 1)]
    if name == "fixed":  # last key of every earlier block, then own block up to i
        block = i // w
        return [(one * (w - 1), one * w, block), (block * w, one, i - block * w + 1)]
    half = window_size // 2
    step = 1 if name == "sliding_window" else dilation
    # j = i + k * step for k in [-half, half], inside [0, size)
    k_lo = np.maximum(-half, -(i // step))
    k_hi = np.minimum(half, (size - 1 - i) // step)
    return [(i + k_lo * step, one * step, k_hi - k_lo + 1)]


def _check_pattern(name: str, size: int, window_size: int, stride: int, dilation: int) -> None:
    check_analysis_parameters(size=size, window_size=window_size if name != "normal" else 1,
                              stride=stride if name == "strided" else 1,
                              dilation=dilation if name == "dilated_sliding_window" else 1)
    if name not in PATTERN_NAMES:
        raise ConfigError(f"pattern: got {name!r}; must be one of {', '.join(PATTERN_NAMES)}")


def pattern_points(name: str, size: int, window_size: int = 32, stride: int = 32,
                   dilation: int = 2) -> MaskPoints:
    """Active points of a structured pattern (same definitions as ``sah.patterns``) without
    building the dense square: memory proportional to the active positions."""
    _check_pattern(name, size, window_size, stride, dilation)
    pieces = _pattern_pieces(name, np.arange(size, dtype=np.int64), size, window_size, stride,
                             dilation)
    return _progressions(size, pieces)


def pattern_num_active(name: str, size: int, window_size: int = 32, stride: int = 32,
                       dilation: int = 2, rows_per_chunk: int = 1 << 20) -> int:
    """The number of active positions of a pattern, counted a chunk of rows at a time:
    memory O(``rows_per_chunk``) whatever the size (refuse work with this before building
    points: :func:`check_pattern_memory`)."""
    _check_pattern(name, size, window_size, stride, dilation)
    total = 0
    for lo in range(0, size, rows_per_chunk):
        i = np.arange(lo, min(size, lo + rows_per_chunk), dtype=np.int64)
        total += sum(int(np.maximum(p[2], 0).sum()) for p in
                     _pattern_pieces(name, i, size, window_size, stride, dilation))
    return total


def check_pattern_memory(name: str, size: int, window_size: int = 32, stride: int = 32,
                         dilation: int = 2, num_multiplications: int = 64, read_limit: int = 1000,
                         order: str = "row_first", flag: str = "--mask_size",
                         fix: str = "") -> int:
    """Count the pattern's active positions (cheaply) and refuse the analysis when it would
    not fit in memory. Returns the count."""
    check_memory(rows_bytes(size), f"{flag} {size}: the {name} pattern's rows alone",
                 fix or f"use a smaller {flag}")
    active = pattern_num_active(name, size, window_size, stride, dilation)
    check_memory(analysis_bytes(active, size, num_multiplications, read_limit, order),
                 f"{flag} {size}: the {name} pattern has {active:,} active positions; the analysis",
                 fix or f"use a smaller {flag}")
    return active


# --------------------------------------------------------------------------- parameters
def check_analysis_parameters(num_multiplications: int = 1, read_limit: int = 2, size: int = 1,
                              window_size: int = 1, stride: int = 1, dilation: int = 1) -> None:
    """Clear errors naming the flag: N >= 1, R >= 2, size >= 1, window/stride/dilation >= 1."""
    for flag, value, low, why in (
            ("num_multiplications", num_multiplications, 1, "the array needs at least one multiplier"),
            ("read_limit", read_limit, 2, "one multiplication reads a row and a column"),
            ("mask_size", size, 1, "a mask needs at least one row"),
            ("window_size", window_size, 1, "a window holds at least one key"),
            ("stride", stride, 1, "a stride of 0 never advances"),
            ("dilation", dilation, 1, "a dilation of 0 never advances")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"--{flag}: got {value!r}; must be an int >= {low} ({why})")


# --------------------------------------------------------------------------- schedule
@dataclass
class Schedule:
    """Steps of the greedy walk over the points of a mask in walk coordinates (``major`` =
    rows for row-first, columns for column-first). Steps are contiguous in walk order."""

    points: MaskPoints      # walk-major CSR (the transpose for column-first)
    zigzag: bool
    start: np.ndarray       # (steps,) first walk index of each step
    end: np.ndarray         # (steps,) one past the last walk index
    num_major: np.ndarray   # (steps,) distinct majors in the step
    num_minor: np.ndarray   # (steps,) distinct minors in the step
    new_major: np.ndarray   # (steps,) majors not in the previous step (step 0: all)
    new_minor: np.ndarray   # (steps,) minors not in the previous step (step 0: all)

    @property
    def steps(self) -> int:
        return int(self.start.size)

    def walk_points(self, lo: int, hi: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(major, minor)`` of walk indices ``[lo, hi)`` in walk order."""
        indptr, cols = self.points.indptr, self.points.cols
        pos = np.arange(lo, hi, dtype=np.int64)
        major = np.searchsorted(indptr, pos, side="right") - 1
        if self.zigzag:  # odd majors are walked in descending minor order
            odd = (major & 1) == 1
            pos = np.where(odd, indptr[major] + indptr[major + 1] - 1 - pos, pos)
        return major, cols[pos]


def greedy_schedule(points: MaskPoints, num_multiplications: int, read_limit: int,
                    zigzag: bool = False) -> Schedule:
    """The greedy schedule of RESOURCES.md over ``points`` walked major-first."""
    check_analysis_parameters(num_multiplications=num_multiplications, read_limit=read_limit)
    n_mult, limit = int(num_multiplications), int(read_limit)
    indptr, cols = points.indptr, points.cols
    stamp = np.full(points.shape[1], -2, dtype=np.int64)  # last step holding each minor (-2: none)
    bulk = min(n_mult, limit - 1)  # points of a step that starts empty and stays in one row
    starts: List[int] = []
    n_maj: List[int] = []
    n_min: List[int] = []
    shared: List[int] = []  # minors also held by the previous step
    first_maj: List[int] = []
    last_maj: List[int] = []
    t = count = rows = ncols = nshared = cur_start = cur_first = cur_last = 0

    def close_step(start: int, majors: int, minors: int, held: int, first: int, last: int) -> None:
        starts.append(start)
        n_maj.append(majors)
        n_min.append(minors)
        shared.append(held)
        first_maj.append(first)
        last_maj.append(last)

    lengths = np.diff(indptr)
    for r in np.flatnonzero(lengths).tolist():
        a, length = int(indptr[r]), int(lengths[r])
        seg = cols[a:a + length]
        if zigzag and r & 1:
            seg = seg[::-1]
        pos, row_in_step = 0, False
        while pos < length:
            if count == 0 and length - pos >= bulk:  # whole steps inside this row
                m = (length - pos) // bulk
                first = seg[pos:pos + bulk]
                starts.extend(range(a + pos, a + pos + m * bulk, bulk))
                n_maj.extend([1] * m)
                n_min.extend([bulk] * m)
                shared.extend([int(np.count_nonzero(stamp[first] == t - 1))] + [0] * (m - 1))
                first_maj.extend([r] * m)
                last_maj.extend([r] * m)
                stamp[seg[pos:pos + m * bulk]] = np.repeat(np.arange(t, t + m), bulk)
                t, pos = t + m, pos + m * bulk
                continue
            if count == 0:
                cur_start, cur_first = a + pos, r
            row_new = 0 if row_in_step else 1
            take = min(n_mult - count, length - pos)
            part = seg[pos:pos + take]
            held = stamp[part]
            cum = np.cumsum(held != t)  # reads added by each prefix (minors distinct in a row)
            m = int(np.searchsorted(cum, limit - rows - row_new - ncols, side="right"))
            if m:
                ncols += int(cum[m - 1])
                nshared += int(np.count_nonzero(held[:m] == t - 1))
                stamp[part[:m]] = t
                count, pos = count + m, pos + m
                cur_last = r
                if row_new:
                    rows, row_in_step = rows + 1, True
            if count == n_mult or m < take:  # full, or the next point exceeds the read limit
                close_step(cur_start, rows, ncols, nshared, cur_first, cur_last)
                t += 1
                count = rows = ncols = nshared = 0
                row_in_step = False
    if count:
        close_step(cur_start, rows, ncols, nshared, cur_first, cur_last)
    start = np.asarray(starts, dtype=np.int64)
    end = np.append(start[1:], points.num_active).astype(np.int64)
    num_major = np.asarray(n_maj, dtype=np.int64)
    num_minor = np.asarray(n_min, dtype=np.int64)
    fm, lm = np.asarray(first_maj, dtype=np.int64), np.asarray(last_maj, dtype=np.int64)
    new_major = num_major.copy()
    new_major[1:] -= (fm[1:] == lm[:-1])  # majors ascend: only a boundary major is shared
    new_minor = num_minor - np.asarray(shared, dtype=np.int64)
    return Schedule(points, zigzag, start, end, num_major, num_minor, new_major, new_minor)


# --------------------------------------------------------------------------- figures
@dataclass
class MaxCase:
    """The first step with the most distinct rows + columns."""
    time: Optional[int]
    rows: int
    cols: int
    total: int
    row_list: List[int] = field(default_factory=list)
    col_list: List[int] = field(default_factory=list)


@dataclass
class ChangeFigure:
    """The first step ``t >= 1`` with the most new rows / columns / both against step ``t-1``."""
    time: Optional[int]
    count: int
    new_rows: List[int] = field(default_factory=list)
    new_cols: List[int] = field(default_factory=list)


@dataclass
class ResourceAnalysis:
    name: str
    shape: Tuple[int, int]
    num_multiplications: int
    read_limit: int
    order: str
    zigzag: bool
    active: int            # total multiplications
    steps: int             # the seed's "Total Calculation Points"
    utilisation: float     # active / (steps * N)
    mean_reads_per_step: float
    total_reloads: int     # sum over steps of new rows + new columns (step 0 loads all)
    max_case: MaxCase
    max_row_changes: ChangeFigure
    max_col_changes: ChangeFigure
    max_total_changes: ChangeFigure
    parameters: Dict[str, Any] = field(default_factory=dict)  # pattern parameters, sources
    schedule: Optional[Schedule] = field(default=None, repr=False, compare=False)

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)  # type: ignore[call-overload]
        out.pop("schedule", None)
        out["shape"] = list(self.shape)
        return out

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def per_step(self) -> Dict[str, np.ndarray]:
        """Per-step arrays in mask terms: rows, cols, new_rows, new_cols, points."""
        s = self.schedule
        assert s is not None, "analysis made without a schedule"
        row_first = self.order == "row_first"
        return {"rows": s.num_major if row_first else s.num_minor,
                "cols": s.num_minor if row_first else s.num_major,
                "new_rows": s.new_major if row_first else s.new_minor,
                "new_cols": s.new_minor if row_first else s.new_major,
                "points": s.end - s.start}

    def step_points(self, time: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` of the points of step ``time`` in walk order (mask coordinates)."""
        s = self.schedule
        assert s is not None, "analysis made without a schedule"
        major, minor = s.walk_points(int(s.start[time]), int(s.end[time]))
        return (major, minor) if self.order == "row_first" else (minor, major)

    def seed_lines(self) -> List[str]:
        """The seed calculator's analysis lines (its wording, parsed by existing scripts)."""
        title = " ".join(w.capitalize() for w in self.name.split("_"))
        mc = self.max_case
        show = lambda t: "n/a" if t is None else str(t)  # noqa: E731
        return [f"--- {title} Mask ---",
                f"Total Calculation Points: {self.steps}",
                f"Max Case Time: {show(mc.time)}",
                f"Unique Rows: {mc.rows}",
                f"Unique Columns: {mc.cols}",
                f"Total Unique Indices (Rows + Columns): {mc.total}",
                f"Max Row Changes at time {show(self.max_row_changes.time)}: "
                f"{self.max_row_changes.count} new rows",
                f"Max Column Changes at time {show(self.max_col_changes.time)}: "
                f"{self.max_col_changes.count} new columns",
                f"Max Total Changes at time {show(self.max_total_changes.time)}: "
                f"{self.max_total_changes.count} total changes"]


def analyse_points(points: MaskPoints, num_multiplications: int, read_limit: int,
                   order: str = "row_first", zigzag: bool = False, name: str = "mask",
                   parameters: Optional[Dict[str, Any]] = None) -> ResourceAnalysis:
    """Every figure of RESOURCES.md for the active ``points`` of a 2-D mask."""
    check_analysis_parameters(num_multiplications=num_multiplications, read_limit=read_limit)
    if order not in ORDERS:
        raise ConfigError(f"--order: got {order!r}; must be one of {', '.join(ORDERS)}")
    walk = points if order == "row_first" else points.transpose()
    sched = greedy_schedule(walk, num_multiplications, read_limit, zigzag)
    result = ResourceAnalysis(
        name=name, shape=tuple(int(x) for x in points.shape), num_multiplications=int(num_multiplications),
        read_limit=int(read_limit), order=order, zigzag=bool(zigzag), active=points.num_active,
        steps=sched.steps, utilisation=0.0, mean_reads_per_step=0.0, total_reloads=0,
        max_case=MaxCase(None, 0, 0, 0), max_row_changes=ChangeFigure(None, 0),
        max_col_changes=ChangeFigure(None, 0), max_total_changes=ChangeFigure(None, 0),
        parameters=dict(parameters or {}), schedule=sched)
    if sched.steps == 0:
        return result
    per = result.per_step()
    reads = per["rows"] + per["cols"]
    result.utilisation = float(points.num_active / (sched.steps * num_multiplications))
    result.mean_reads_per_step = float(reads.mean())
    result.total_reloads = int(per["new_rows"].sum() + per["new_cols"].sum())
    t = int(np.argmax(reads))  # first maximum
    rows, cols = result.step_points(t)
    result.max_case = MaxCase(t, int(per["rows"][t]), int(per["cols"][t]), int(reads[t]),
                              np.unique(rows).tolist(), np.unique(cols).tolist())
    if sched.steps > 1:
        figures = []
        for counts in (per["new_rows"], per["new_cols"], per["new_rows"] + per["new_cols"]):
            t = 1 + int(np.argmax(counts[1:]))
            rows_now, cols_now = result.step_points(t)
            rows_prev, cols_prev = result.step_points(t - 1)
            figures.append(ChangeFigure(t, int(counts[t]), np.setdiff1d(rows_now, rows_prev).tolist(),
                                        np.setdiff1d(cols_now, cols_prev).tolist()))
        result.max_row_changes, result.max_col_changes, result.max_total_changes = figures
    return result


def analyse_mask(mask: Any, num_multiplications: int, read_limit: int, order: str = "row_first",
                 zigzag: bool = False, name: str = "mask",
                 parameters: Optional[Dict[str, Any]] = None) -> ResourceAnalysis:
    """Analyse a 2-D mask: a dense array/tensor (nonzero = active), or :class:`MaskPoints`."""
    points = mask if isinstance(mask, MaskPoints) else points_from_dense(mask)
    return analyse_points(points, num_multiplications, read_limit, order, zigzag, name, parameters)


def analyse_pattern(name: str, size: int, num_multiplications: int, read_limit: int,
                    window_size: int = 32, stride: int = 32, dilation: int = 2,
                    order: str = "row_first", zigzag: bool = False) -> ResourceAnalysis:
    """Analyse a structured pattern of side ``size`` (the seed calculator's masks)."""
    check_analysis_parameters(num_multiplications=num_multiplications, read_limit=read_limit)
    check_pattern_memory(name, size, window_size, stride, dilation, num_multiplications,
                         read_limit, order)
    points = pattern_points(name, size, window_size, stride, dilation)
    params: Dict[str, Any] = {"pattern": name, "mask_size": size}
    if name != "normal":
        params["window_size"] = window_size
    if name == "strided":
        params["stride"] = stride
    if name == "dilated_sliding_window":
        params["dilation"] = dilation
    return analyse_points(points, num_multiplications, read_limit, order, zigzag, name, params)
