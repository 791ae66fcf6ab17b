"""XLA's TPU cost model made per-step: while loops (the scanned layers) counted trip-count times.

`compiled.cost_analysis()` counts the body of a while loop once, whatever its trip count, so a
step with a scanned 12-layer stack is reported as if it had one layer (and its
`optimal_seconds` can come back negative: a sentinel for "no estimate", not a time). Here the
optimized HLO (`compiled.as_text()`) is read; every while loop whose trip count is known (XLA's
`known_trip_count` annotation, or the `lax.scan` form of its condition, a counter from 0
compared `LT` with a constant, which is all the TPU compiler leaves) adds `trip - 1` more copies
of its body, costed by the same per-instruction rules as XLA's HloCostAnalysis (dots and
convolutions 2 x MACs, one flop per element of elementwise ops; bytes: operands and result
of every top-level instruction, slices as slices). Nested loops multiply. XLA's own totals
stay the base (scaled by what the loops add), so a program without loops is reported exactly
as XLA reports it. Why not compile the step with its scans unrolled instead: that doubles
the compiles of a run whose one full-size compile already takes ~17 minutes here, and the
unrolled program is not the one that runs.

XLA's "bytes accessed" counts every operand and result of every instruction as if it were in
HBM. On a TPU the compiler's memory-space assignment keeps many of them in the chip's VMEM
(layouts marked `S(1)` in the optimized HLO): a forward scan whose activations fit there
moves its input and each layer's weights through HBM, and nothing else (hand-checked in
tests/test_costmodel.py, where XLA's count is 6x that). `hbm_bytes` reads the HBM traffic off
the compiled program instead: per top-level instruction (loops times their trips) the bytes of
its operands and results that live in HBM, a slice reading its slice, an in-place update
writing its update, an async copy or slice moving its data once. The step-time estimate is the
roofline of those bytes and XLA's flops: a lower bound on the time, since VMEM traffic, the
vector units and imperfect overlap are not counted.

Everything here is an estimate of the compiler's cost model, not a measurement.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

_DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4,
    "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
    "s4": 1, "u4": 1, "token": 0,
}  # fmt: skip
_ELEMENTWISE = {
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "negate", "abs", "compare",
    "select", "and", "or", "xor", "not", "clamp", "remainder", "power", "sign", "floor", "ceil",
    "round-nearest-even", "round-nearest-afz", "exponential", "log", "tanh", "rsqrt", "sqrt",
    "logistic", "erf", "exponential-minus-one", "log-plus-one", "sine", "cosine", "atan2",
    "cbrt", "tan", "is-finite", "reduce",
}  # fmt: skip
_NO_BYTES = {
    "parameter", "get-tuple-element", "tuple", "constant", "bitcast", "while", "conditional",
    "call", "after-all", "partition-id", "replica-id", "opt-barrier",
}  # fmt: skip
_SHAPE = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\](\{[^}]*\})?")
_MEMORY_SPACE = re.compile(r"S\((\d+)\)")  # a layout's memory space: none or 0 is HBM
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")


@dataclasses.dataclass
class _Instr:
    name: str
    shape: str  # the result type as printed, e.g. "bf16[8,128]{1,0}" or a tuple
    opcode: str
    operands: list[str]
    attrs: str
    args: str  # the text inside the parentheses (a constant's value)


@dataclasses.dataclass(frozen=True)
class Cost:
    """One step as XLA's cost model counts it, with every loop counted its trip count."""

    flops: float
    bytes_accessed: float  # XLA's bytes (every buffer as if in HBM), loops x trips
    hbm_bytes: float  # the HBM traffic of the compiled program (`_Counter._hbm_bytes`)
    xla_flops: float  # cost_analysis() as XLA reports it (loop bodies once)
    xla_bytes_accessed: float
    xla_optimal_seconds: float | None  # None where XLA gave a negative (no-estimate) value
    loops: tuple[tuple[str, int], ...]  # (while body, trip count) of the loops corrected

    def roofline_seconds(self, peak_flops: float, hbm_bytes_per_s: float) -> float:
        """Step time if the chip ran at its peak FLOP/s or moved its HBM traffic at full
        bandwidth, whichever binds: a lower bound on the time, not a prediction."""
        return max(self.flops / peak_flops, self.hbm_bytes / hbm_bytes_per_s)

    def all_bytes_seconds(self, peak_flops: float, hbm_bytes_per_s: float) -> float:
        """The same with XLA's byte count (every buffer, VMEM included, as if in HBM): the
        estimate before memory spaces were read (issue 25's first tables)."""
        return max(self.flops / peak_flops, self.bytes_accessed / hbm_bytes_per_s)


def _shape_elems_bytes(shape: str, hbm: bool = False) -> tuple[int, int]:
    """(elements, bytes) of a printed HLO type (tuples: summed); `hbm`: only the buffers in HBM
    (a layout without a memory space, or `S(0)`; the TPU's VMEM is `S(1)`)."""
    elems = nbytes = 0
    for dtype, dims, layout in _SHAPE.findall(shape):
        space = _MEMORY_SPACE.search(layout)
        if hbm and space and space.group(1) != "0":
            continue
        n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        elems += n
        nbytes += n * _DTYPE_BYTES.get(dtype, 4)
    return elems, nbytes


def _elements(shape: str) -> list[str]:
    """The array types of a printed HLO type, one per tuple element (one for an array)."""
    return [m.group(0) for m in _SHAPE.finditer(shape)]


def _dims(shape: str) -> list[int]:
    m = _SHAPE.search(shape)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def _split_args(rest: str) -> tuple[str, str]:
    """The text inside the operand parentheses and the attribute text after them."""
    depth, i = 1, 0
    while i < len(rest) and depth:
        depth += {"(": 1, ")": -1}.get(rest[i], 0)
        i += 1
    return rest[: i - 1], rest[i:]


def parse_hlo(text: str) -> dict[str, list[_Instr]]:
    """Computations of an HLO module's text: name -> instructions."""
    comps: dict[str, list[_Instr]] = {}
    current: list[_Instr] | None = None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m and "=" not in line.split("(", 1)[0]:
                current = comps.setdefault(m.group(1), [])
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            args, attrs = _split_args(m.group(4))
            operands = re.findall(r"%([\w.\-]+)", args)
            current.append(_Instr(m.group(1), m.group(2), m.group(3), operands, attrs, args))
    return comps


def _attr_comp(attrs: str, key: str) -> str | None:
    m = re.search(rf"\b{key}=%?([\w.\-]+)", attrs)
    return m.group(1) if m else None


def _dot_flops(ins: _Instr, shapes: dict[str, str]) -> float:
    out, _ = _shape_elems_bytes(ins.shape)
    lhs = _dims(shapes.get(ins.operands[0], ""))
    m = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", ins.attrs)
    k = math.prod(lhs[int(d)] for d in m.group(1).split(",") if d) if m and lhs else 1
    return 2.0 * out * k


def _conv_flops(ins: _Instr, shapes: dict[str, str]) -> float:
    out, _ = _shape_elems_bytes(ins.shape)
    kernel = _dims(shapes.get(ins.operands[1], ""))
    m = re.search(r"dim_labels=\w+_(\w+)->", ins.attrs)
    if not (m and kernel):
        return 2.0 * out
    labels = m.group(1)
    # per output element: every kernel element except its output-feature dimension
    macs = math.prod(n for n, c in zip(kernel, labels, strict=False) if c != "o")
    # An lhs-dilated window meets a real input element at 1 of `dilation` positions per
    # dimension (the TPU compiler writes batched attention matmuls this way).
    dilate = re.search(r"lhs_dilate=([0-9x]+)", ins.attrs)
    holes = math.prod(int(d) for d in dilate.group(1).split("x")) if dilate else 1
    return 2.0 * out * macs / holes


def _while_trips(ins: _Instr, comps: dict[str, list[_Instr]]) -> int | None:
    """A while loop's trip count: XLA's `known_trip_count`, or its `lax.scan` condition's."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', ins.attrs)
    if known:
        return int(known.group(1))
    return _trip_count(comps.get(_attr_comp(ins.attrs, "condition") or "", []))


def _trip_count(cond: list[_Instr]) -> int | None:
    """The trip count of a `lax.scan`-style condition: counter < constant (counter from 0)."""
    root = cond[-1] if cond else None
    if root is None or root.opcode != "compare" or "direction=LT" not in root.attrs:
        return None
    consts = {i.name: i.args.strip() for i in cond if i.opcode == "constant"}
    bound = consts.get(root.operands[1]) if len(root.operands) == 2 else None
    return int(bound) if bound is not None and re.fullmatch(r"-?\d+", bound) else None


class _Counter:
    """Flops and bytes of computations by XLA's per-instruction rules; loops times trip count."""

    def __init__(self, comps: dict[str, list[_Instr]], hbm: bool = False):
        self.comps = comps
        self.hbm = hbm  # bytes: HBM traffic only (`_hbm_bytes`), else XLA's rules (`_bytes`)
        self.loops: list[tuple[str, int]] = []
        self._memo: dict[tuple[str, bool, bool], tuple[float, float]] = {}

    def cost(self, name: str, fused: bool = False, loops: bool = True) -> tuple[float, float]:
        key = (name, fused, loops)
        if key not in self._memo:
            self._memo[key] = self._cost(name, fused, loops)
        return self._memo[key]

    def _cost(self, name: str, fused: bool, loops: bool) -> tuple[float, float]:
        instrs = self.comps.get(name, [])
        shapes = {i.name: i.shape for i in instrs}
        flops = nbytes = 0.0
        for ins in instrs:
            out_elems, out_bytes = _shape_elems_bytes(ins.shape)
            if ins.opcode == "dot":
                flops += _dot_flops(ins, shapes)
            elif ins.opcode == "convolution":
                flops += _conv_flops(ins, shapes)
            elif ins.opcode in _ELEMENTWISE:
                flops += out_elems
            elif ins.opcode == "fusion" and (sub := _attr_comp(ins.attrs, "calls")):
                flops += self.cost(sub, fused=True)[0]
            elif ins.opcode == "while":
                body = _attr_comp(ins.attrs, "body")
                trip = _while_trips(ins, self.comps) if loops else None
                f, b = self.cost(body, loops=loops)
                n = trip if trip is not None else 1
                if trip is not None:
                    self.loops.append((body, trip))
                flops, nbytes = flops + n * f, nbytes + n * b
            elif ins.opcode in ("call", "async-start") and (sub := _attr_comp(ins.attrs, "calls")):
                f, b = self.cost(sub, loops=loops)
                flops, nbytes = flops + f, nbytes + b
            if not fused and ins.opcode not in _NO_BYTES:
                nbytes += (self._hbm_bytes if self.hbm else self._bytes)(ins, shapes)
        return flops, nbytes

    def _hbm_bytes(self, ins: _Instr, shapes: dict[str, str]) -> float:
        """What a top-level instruction reads from and writes to HBM, by where the compiler put
        its buffers (memory-space assignment keeps many in the TPU's VMEM, `S(1)`, at no HBM
        cost). A slice reads its slice; an in-place dynamic-update-slice writes its update; an
        async copy or slice moves its data once (at its start: the done only waits); a buffer
        the compiler only allocates (an AllocateBuffer custom call: what a broadcast of zeros
        becomes when every element is written later, as a scan's stacked outputs) moves
        nothing; a fusion reads, of each operand in HBM, what its computation uses (slices,
        nothing of a buffer it updates in place) and writes, of each output in HBM, its update
        or all of it.
        """
        op = ins.opcode
        if op == "async-start" or op.endswith("-done"):
            return 0.0  # the start moves the data (an async-start's computation: `_cost`)
        if op == "custom-call" and 'custom_call_target="AllocateBuffer"' in ins.attrs:
            return 0.0  # an uninitialised buffer (e.g. a scan's stacked outputs): no data moved
        size = lambda name: _shape_elems_bytes(shapes.get(name, ""), hbm=True)[1]  # noqa: E731
        whole = lambda shape: _shape_elems_bytes(shape)[1]  # noqa: E731
        out = _shape_elems_bytes(ins.shape, hbm=True)[1]
        if op == "copy-start":  # -> (destination, source, context): read once, write once
            return size(ins.operands[0]) + _shape_elems_bytes(_elements(ins.shape)[0], hbm=True)[1]
        if op.endswith("-start") and ins.shape.startswith("(("):
            # an async op as XLA prints it short, `slice-start(x)`: -> ((operands), outputs,
            # context); a slice reads its slice, anything else its operands
            n = sum(len(_elements(shapes.get(o, ""))) for o in ins.operands)
            outs = _elements(ins.shape)[n:]
            if op in ("slice-start", "dynamic-slice-start"):
                reads = whole(outs[0]) if outs and size(ins.operands[0]) else 0
            else:
                reads = sum(size(o) for o in ins.operands)
            return reads + sum(_shape_elems_bytes(o, hbm=True)[1] for o in outs)
        if op in ("slice", "dynamic-slice"):
            return (whole(ins.shape) if size(ins.operands[0]) else 0) + out
        if op == "dynamic-update-slice":
            update = whole(shapes.get(ins.operands[1], ""))
            return size(ins.operands[1]) + (update if out else 0)
        sub = _attr_comp(ins.attrs, "calls") if op == "fusion" else None
        if sub is None:
            return float(sum(size(o) for o in ins.operands) + out)
        reads = sum(self._read(sub, k) if size(o) else 0 for k, o in enumerate(ins.operands))
        return reads + self._written(sub, ins.shape)

    def _read(self, comp: str, k: int) -> float:
        """Bytes a fused computation reads of its parameter k (nested fusions followed)."""
        instrs = self.comps.get(comp, [])
        param = next(
            (i for i in instrs if i.opcode == "parameter" and i.args.strip() == str(k)), None
        )
        if param is None:
            return 0.0
        full = _shape_elems_bytes(param.shape)[1]
        total = 0.0
        for u in (i for i in instrs if param.name in i.operands):
            if u.opcode in ("slice", "dynamic-slice") and u.operands[0] == param.name:
                total += _shape_elems_bytes(u.shape)[1]
            elif u.opcode == "dynamic-update-slice" and u.operands[0] == param.name:
                pass  # updated in place: the write is counted as the output's
            elif u.opcode == "fusion" and u.operands.count(param.name) == 1:
                total += self._read(
                    _attr_comp(u.attrs, "calls") or "", u.operands.index(param.name)
                )
            else:
                return full
        return min(total, full)

    def _written(self, comp: str, shape: str) -> float:
        """HBM bytes a fusion writes: per output in HBM, its update (in place) or all of it."""
        instrs = self.comps.get(comp, [])
        if not instrs:
            return _shape_elems_bytes(shape, hbm=True)[1]
        by_name = {i.name: i for i in instrs}
        root, elements = instrs[-1], _elements(shape)
        roots = [by_name.get(o) for o in root.operands] if root.opcode == "tuple" else [root]
        if len(roots) != len(elements):
            return _shape_elems_bytes(shape, hbm=True)[1]
        total = 0.0
        for r, element in zip(roots, elements, strict=True):
            if not _shape_elems_bytes(element, hbm=True)[1]:
                continue
            if r is not None and r.opcode == "dynamic-update-slice" and len(r.operands) > 1:
                total += (
                    _shape_elems_bytes(by_name[r.operands[1]].shape)[1]
                    if r.operands[1] in by_name
                    else 0
                )
            else:
                total += _shape_elems_bytes(element)[1]
        return total

    def _bytes(self, ins: _Instr, shapes: dict[str, str]) -> float:
        """Operand and result bytes of a top-level instruction, slices as XLA counts them.

        A dynamic-slice reads only its slice and a dynamic-update-slice writes only its
        update in place (so a scan reading layer i of the stacked weights moves one layer).
        """
        size = lambda name: _shape_elems_bytes(shapes.get(name, ""))[1]  # noqa: E731
        out_bytes = _shape_elems_bytes(ins.shape)[1]
        if ins.opcode == "dynamic-slice":
            return 2.0 * out_bytes
        if ins.opcode == "dynamic-update-slice":
            return 2.0 * size(ins.operands[1]) if len(ins.operands) > 1 else out_bytes
        if ins.opcode != "fusion" or not (sub := _attr_comp(ins.attrs, "calls")):
            return float(sum(size(o) for o in ins.operands) + out_bytes)
        fused = self.comps.get(sub, [])
        fshapes = {i.name: i.shape for i in fused}
        params = {}
        for i in fused:
            if i.opcode == "parameter" and i.args.strip().isdigit():
                params[int(i.args.strip())] = i.name
        total = 0.0
        for k, operand in enumerate(ins.operands):
            users = [i for i in fused if params.get(k) in i.operands]
            if users and all(
                u.opcode == "dynamic-slice" and u.operands[0] == params[k] for u in users
            ):
                total += sum(_shape_elems_bytes(u.shape)[1] for u in users)
            elif users and all(
                u.opcode == "dynamic-update-slice" and u.operands[0] == params[k] for u in users
            ):
                total += sum(_shape_elems_bytes(fshapes.get(u.operands[1], ""))[1] for u in users)
            else:
                total += size(operand)
        root = fused[-1] if fused else None
        if root is not None and root.opcode == "dynamic-update-slice" and len(root.operands) > 1:
            out_bytes = _shape_elems_bytes(fshapes.get(root.operands[1], ""))[1]
        return total + out_bytes


def _entry_name(text: str) -> str:
    m = re.search(r"^ENTRY\s+%?([\w.\-]+)", text, re.MULTILINE)
    if not m:
        raise ValueError("no ENTRY computation in the HLO text")
    return m.group(1)


def hlo_cost(text: str) -> tuple[float, float, float, float, list[tuple[str, int]]]:
    """(flops, bytes) of an optimized HLO module by XLA's rules, loops once and loops x trips."""
    return _loop_costs(parse_hlo(text), _entry_name(text))


def _loop_costs(comps: dict[str, list[_Instr]], entry: str):
    once = _Counter(comps).cost(entry, loops=False)
    counter = _Counter(comps)
    full = counter.cost(entry)
    return once[0], once[1], full[0], full[1], counter.loops


def hbm_bytes(text: str) -> float:
    """The HBM traffic of one run of an optimized HLO module, loops x trips (`_hbm_bytes`)."""
    return _Counter(parse_hlo(text), hbm=True).cost(_entry_name(text))[1]


def _first(analysis: Any) -> dict[str, float]:
    return (analysis[0] if isinstance(analysis, list | tuple) else analysis) or {}


def estimate(compiled: Any, text: str | None = None) -> Cost:
    """The per-step cost of a compiled executable, loops counted their trip counts (`text`:
    its `as_text()`, when the caller has it already).

    XLA's totals, scaled by how much counting every loop `trip` times (instead of once) adds
    under the per-instruction rules here: those rules give XLA's flops to within a percent
    but over-count bytes (fusion operand reuse), so the ratio, not the difference, is used.
    """
    xla = _first(compiled.cost_analysis())
    text = compiled.as_text() if text is None else text
    comps, entry = parse_hlo(text), _entry_name(text)
    once_f, once_b, full_f, full_b, loops = _loop_costs(comps, entry)
    xla_flops = float(xla.get("flops", 0.0))
    xla_bytes = float(xla.get("bytes accessed", 0.0))
    seconds = xla.get("optimal_seconds")
    return Cost(
        flops=xla_flops * (full_f / once_f if once_f else 1.0),
        bytes_accessed=xla_bytes * (full_b / once_b if once_b else 1.0),
        hbm_bytes=_Counter(comps, hbm=True).cost(entry)[1],
        xla_flops=xla_flops,
        xla_bytes_accessed=xla_bytes,
        xla_optimal_seconds=float(seconds) if seconds is not None and seconds >= 0 else None,
        loops=tuple(loops),
    )


def top(text: str, n: int = 15, depth: int = 9) -> list[dict[str, Any]]:
    """The largest costs of an optimized HLO module: where the step's HBM traffic goes.

    Every top-level instruction (a fusion counted whole, loops times their trip count) is
    charged to its source op: the first `depth` parts of its `op_name` metadata (the jax
    name stack, e.g. `jit(train_step)/.../conv_general_dilated`). Returns the `n` largest by
    HBM bytes (`hbm_bytes`), each with its share of all HBM bytes and flops, and its bytes by
    XLA's rules (`bytes`, every buffer as if in HBM) and their share.
    """
    comps, entry = parse_hlo(text), _entry_name(text)
    counter, hbm = _Counter(comps), _Counter(comps, hbm=True)
    rows: dict[str, list[float]] = {}

    def walk(name: str, times: float) -> None:
        instrs = comps.get(name, [])
        shapes = {i.name: i.shape for i in instrs}
        for ins in instrs:
            if ins.opcode == "while":
                k = _while_trips(ins, comps) or 1
                walk(_attr_comp(ins.attrs, "body") or "", times * k)
                continue
            if ins.opcode in ("call", "async-start") and (sub := _attr_comp(ins.attrs, "calls")):
                walk(sub, times)  # an async-start's own HBM bytes are its computation's
                continue
            if ins.opcode in _NO_BYTES:
                continue
            if ins.opcode == "fusion" and (sub := _attr_comp(ins.attrs, "calls")):
                flops = counter.cost(sub, fused=True)[0]
            elif ins.opcode == "dot":
                flops = _dot_flops(ins, shapes)
            elif ins.opcode == "convolution":
                flops = _conv_flops(ins, shapes)
            else:
                flops = 0.0
            m = re.search(r'op_name="([^"]*)"', ins.attrs)
            key = "/".join((m.group(1) if m else f"<{ins.opcode}>").split("/")[:depth])
            row = rows.setdefault(key, [0.0, 0.0, 0.0, 0.0])
            row[0] += times * hbm._hbm_bytes(ins, shapes)
            row[1] += times * counter._bytes(ins, shapes)
            row[2] += times * flops
            row[3] += times

    walk(entry, 1.0)
    total_h = sum(r[0] for r in rows.values()) or 1.0
    total_b = sum(r[1] for r in rows.values()) or 1.0
    total_f = sum(r[2] for r in rows.values()) or 1.0
    ranked = sorted(rows.items(), key=lambda kv: (-kv[1][0], -kv[1][1]))[:n]
    return [
        {"op": k, "hbm_bytes": h, "hbm_share": h / total_h, "bytes": b, "bytes_share": b / total_b,
         "flops": f, "flops_share": f / total_f, "count": int(c)}
        for k, (h, b, f, c) in ranked
    ]  # fmt: skip
