"""Per-op-category time of a compiled XLA computation, from a jax.profiler trace and its HLO.

A trace (`jax.profiler.trace(dir, create_perfetto_trace=True)`) holds one event per executed
op, named by its HLO instruction (`args.hlo_op`: the fusion or custom-call on XLA:CPU; on a
GPU each kernel carries the instruction that launched it). The compiled HLO text
(`compiled.as_text()`) says what each instruction is: a fusion is categorised by what it
fuses (a convolution, a dot, a norm's rsqrt, ...), so the same rules work on CPU fusion names
and GPU kernel names. Concurrent ops (thread pools, streams) share the wall time they overlap,
so the categories add up to the time some op was running; the rest of a step is "idle".
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import pathlib
import re
from collections.abc import Iterable
from typing import Any

CATEGORIES = ("convolution", "matmul", "attention", "normalisation", "elementwise",
              "copy/transpose", "collective", "other")  # fmt: skip
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute",
               "collective-broadcast", "send", "recv")  # fmt: skip
MOVEMENT = {"copy", "transpose", "bitcast", "reshape", "broadcast", "concatenate", "slice",
            "dynamic-slice", "dynamic-update-slice", "pad", "gather", "scatter", "reverse",
            "copy-start", "copy-done", "iota", "parameter", "constant", "tuple",
            "get-tuple-element", "bitcast-convert", "convert"}  # fmt: skip
CONTROL = {"while", "conditional", "call", "async-start", "async-done", "async-update"}
NORM_SCOPE = re.compile(r"layer_norm|group_norm|LayerNorm|GroupNorm|_normalize")
# Inside an attention module but not one of its projections (flax scopes), or jax's own names.
ATTENTION_SCOPE = re.compile(
    r"dot_product_attention|softmax|BTNH,BSNH|BNTS,BSNH|/attention/(?!\w*(?:proj|linear)\b)"
)
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2,
               "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8,
               "f64": 8, "c64": 8, "c128": 16}  # fmt: skip
_SHAPE = re.compile(r"\b([a-z]+[0-9a-z]*)\[([0-9,]*)\]")
_INSTR = re.compile(
    r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\([^=]*?\)|[a-z]+[0-9a-z]*\[[0-9,]*\](?:\{[^}]*\})?"
    r"|token\[\]|\(\))\s+([\w\-]+)\((.*)$"
)
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s+\(.*\)\s*->\s*.*\{\s*$")


@dataclasses.dataclass
class Instr:
    """One HLO instruction: what the categoriser and the FLOP/byte counts need."""

    name: str
    opcode: str
    shape: str
    operands: list[str]
    attrs: str
    calls: list[str]


def _shape_bytes(shape: str) -> int:
    """Bytes of every array in an HLO shape string (tuples summed)."""
    total = 0
    for dtype, dims in _SHAPE.findall(shape):
        total += DTYPE_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
    return total


def _dims(shape: str) -> list[int]:
    """Dimensions of the first array in a shape string."""
    match = _SHAPE.search(shape)
    return [int(d) for d in match.group(2).split(",") if d] if match else []


class Hlo:
    """The instructions and computations of an HLO module's text (`compiled.as_text()`)."""

    def __init__(self, text: str):
        self.module = re.match(r"HloModule\s+([\w.\-]+)", text.lstrip()).group(1)
        self.instrs: dict[str, Instr] = {}
        self.computations: dict[str, list[str]] = {}
        current = None
        for line in text.splitlines():
            comp = _COMPUTATION.match(line)
            if comp and "=" not in line.split("(")[0]:
                current = comp.group(1)
                self.computations[current] = []
                continue
            m = _INSTR.match(line)
            if not m or current is None:
                continue
            name, shape, opcode, rest = m.groups()
            depth, end = 1, len(rest)
            for i, ch in enumerate(rest):  # the operand list ends at its closing parenthesis
                depth += {"(": 1, ")": -1}.get(ch, 0)
                if depth == 0:
                    end = i
                    break
            operands = re.findall(r"%([\w.\-]+)", rest[:end])
            attrs = rest[end + 1 :]
            # Only what a fusion or custom call runs; reducers (to_apply) are shared regions.
            calls = re.findall(r"\bcalls=\{?%?([\w.\-]+(?:,\s*%?[\w.\-]+)*)", attrs)
            called = [c.strip().lstrip("%") for group in calls for c in group.split(",")]
            self.instrs[name] = Instr(name, opcode, shape, operands, attrs, called)
            self.computations[current].append(name)
        self._cache: dict[str, tuple[str, float]] = {}

    def _inner(self, instr: Instr) -> list[Instr]:
        """The instruction and, for fusions and custom calls, everything it calls (recursive)."""
        out, todo = [instr], [] if instr.opcode in CONTROL else list(instr.calls)
        while todo:
            for name in self.computations.get(todo.pop(), []):
                inner = self.instrs[name]
                out.append(inner)
                todo.extend(inner.calls)
        return out

    def flops(self, instr: Instr) -> float:
        """2 x multiply-adds of the dots and convolutions an instruction runs."""
        total = 0.0
        for inner in self._inner(instr):
            out_elems = math.prod(_dims(inner.shape)) if _SHAPE.search(inner.shape) else 0
            if inner.opcode == "dot" and inner.operands:
                lhs = _dims(self.instrs[inner.operands[0]].shape)
                m = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", inner.attrs)
                contract = [int(d) for d in m.group(1).split(",") if d] if m else []
                total += 2.0 * out_elems * math.prod(lhs[d] for d in contract)
            elif inner.opcode == "convolution" and len(inner.operands) > 1:
                kernel = _dims(self.instrs[inner.operands[1]].shape)
                labels = re.search(r"dim_labels=\w+_(\w+)->", inner.attrs)
                o = labels.group(1).index("o") if labels and "o" in labels.group(1) else -1
                total += 2.0 * out_elems * math.prod(kernel) / max(kernel[o], 1)
        return total

    def bytes(self, instr: Instr) -> float:
        """Bytes the instruction reads (its operands) and writes (its result)."""
        reads = sum(_shape_bytes(self.instrs[o].shape) for o in instr.operands if o in self.instrs)
        return float(reads + _shape_bytes(instr.shape))

    def category(self, name: str) -> str:
        """The op category of an executed instruction (see CATEGORIES)."""
        instr = self.instrs.get(name)
        if instr is None:
            return _category_from_kernel_name(name)
        inner = self._inner(instr)
        opcodes = {i.opcode for i in inner}
        targets = " ".join(re.findall(r'custom_call_target="([^"]+)"', instr.attrs)).lower()
        scopes = " ".join(_op_name(i) for i in inner)
        if any(op.startswith(COLLECTIVES) for op in opcodes) or "nccl" in targets:
            return "collective"
        if "fmha" in targets or "flash" in targets or "dot_product_attention" in targets:
            return "attention"
        if "convolution" in opcodes or "conv" in targets:
            return "convolution"
        if "dot" in opcodes or "gemm" in targets or "matmul" in targets:
            return "attention" if _attention_dot(self, inner) else "matmul"
        if instr.opcode in CONTROL or instr.opcode == "custom-call":
            return "other"
        if "rsqrt" in opcodes or NORM_SCOPE.search(scopes):
            return "normalisation"
        if ATTENTION_SCOPE.search(scopes):
            return "attention"
        if opcodes <= MOVEMENT:
            return "copy/transpose"
        return "elementwise"


def _attention_dot(hlo: Hlo, inner: list[Instr]) -> bool:
    """A dot of attention itself (scores, weights x values), not a projection."""
    del hlo
    return any(i.opcode == "dot" and ATTENTION_SCOPE.search(_op_name(i)) for i in inner)


def _op_name(instr: Instr) -> str:
    """The JAX name stack of an instruction (its metadata op_name)."""
    m = re.search(r'op_name="([^"]*)"', instr.attrs)
    return m.group(1) if m else ""


def _category_from_kernel_name(name: str) -> str:
    """Fallback for events without an HLO instruction (memcpy, library kernels)."""
    low = name.lower()
    if "nccl" in low:
        return "collective"
    if "memcpy" in low or "memset" in low or "transpose" in low or "copy" in low:
        return "copy/transpose"
    if "fmha" in low or "flash" in low:
        return "attention"
    if "conv" in low or "implicit_gemm" in low:
        return "convolution"
    if "gemm" in low or "xmma" in low or "cutlass" in low or "cublas" in low:
        return "matmul"
    return "other"


# ---------------------------------------------------------------- trace


def perfetto_file(trace_dir: str | pathlib.Path) -> pathlib.Path:
    """The newest perfetto_trace.json.gz under a jax.profiler trace folder."""
    files = sorted(pathlib.Path(trace_dir).rglob("perfetto_trace.json.gz"),
                   key=lambda p: p.stat().st_mtime)  # fmt: skip
    if not files:
        raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
    return files[-1]


# libtpu's profiler plugin adds a "/device:CUSTOM:Megascale Trace" process to every trace once
# it is loaded (e.g. by a compile-only TPU topology), even on a CPU: it is not a device.
_NOT_DEVICES = ("/device:CUSTOM:",)


def _is_device(process_name: str) -> bool:
    return process_name.startswith("/device:") and not process_name.startswith(_NOT_DEVICES)


_DERIVED = ("XLA Modules", "XLA Ops", "TensorFlow", "Framework", "Steps", "Source", "TraceMe")


def has_device_lines(trace_file: str | pathlib.Path) -> bool:
    """Whether the trace holds device (GPU/TPU) lines, i.e. kernel timings."""
    data = json.load(gzip.open(trace_file))
    events = data["traceEvents"] if isinstance(data, dict) else data
    return any(e.get("ph") == "M" and e.get("name") == "process_name"
               and _is_device(e["args"]["name"]) for e in events)  # fmt: skip


def op_events(trace_file: str | pathlib.Path, module: str) -> list[dict[str, Any]]:
    """Leaf op events of `module`: {"op", "start", "dur"} in microseconds, device lines first."""
    data = json.load(gzip.open(trace_file))
    events = data["traceEvents"] if isinstance(data, dict) else data
    procs, threads = {}, {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "process_name":
            procs[e["pid"]] = e["args"]["name"]
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            threads[(e["pid"], e.get("tid"))] = e["args"]["name"]
    device = {p for p, n in procs.items() if _is_device(n)}
    spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
    if device:  # GPU/TPU: kernels on streams (or the XLA Ops line where there are no streams)
        spans = [e for e in spans if e["pid"] in device]
        lines = {(e["pid"], e.get("tid")) for e in spans}
        names = {k: threads.get(k, "") for k in lines}
        streams = {k for k, n in names.items() if "Stream" in n}
        keep = (
            streams
            or {k for k, n in names.items() if n == "XLA Ops"}
            or {k for k, n in names.items() if not n.startswith(_DERIVED)}
        )
        spans = [e for e in spans if (e["pid"], e.get("tid")) in keep]
        spans = [e for e in spans if (e.get("args") or {}).get("hlo_module", module) == module]
    else:  # XLA:CPU: thunks named by their instruction, on the client's thread pool
        spans = [e for e in spans if (e.get("args") or {}).get("hlo_module") == module
                 and "hlo_op" in e["args"]]  # fmt: skip
    out = [{"op": (e.get("args") or {}).get("hlo_op", e["name"]), "start": float(e["ts"]),
            "dur": float(e["dur"]), "line": (e["pid"], e.get("tid")), "kernel": e["name"]}
           for e in spans]  # fmt: skip
    return _leaves(out)


def _leaves(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drops events that enclose another on the same line (a while loop around its body)."""
    parents = set()
    by_line: dict[Any, list[int]] = {}
    for i, e in enumerate(events):
        by_line.setdefault(e["line"], []).append(i)
    for idx in by_line.values():
        idx.sort(key=lambda i: (events[i]["start"], -events[i]["dur"]))
        stack: list[int] = []
        for i in idx:
            e = events[i]
            while stack and events[stack[-1]]["start"] + events[stack[-1]]["dur"] <= e["start"]:
                stack.pop()
            if stack:
                parents.add(stack[-1])
            stack.append(i)
    return [e for i, e in enumerate(events) if i not in parents]


def apportion(events: Iterable[dict[str, Any]]) -> list[float]:
    """Each event's share of wall time: overlapping events split the time they overlap."""
    events = list(events)
    points = sorted({p for e in events for p in (e["start"], e["start"] + e["dur"])})
    share = [0.0] * len(events)
    order = sorted(range(len(events)), key=lambda i: events[i]["start"])
    active: list[int] = []
    k = 0
    for left, right in zip(points, points[1:]):
        while k < len(order) and events[order[k]]["start"] <= left:
            active.append(order[k])
            k += 1
        active = [i for i in active if events[i]["start"] + events[i]["dur"] > left]
        for i in active:
            share[i] += (right - left) / len(active)
    return share


def busy_seconds(events: Iterable[dict[str, Any]]) -> float:
    """Seconds during which at least one event runs (the union of their intervals)."""
    total, end = 0.0, -math.inf
    for e in sorted(events, key=lambda e: e["start"]):
        stop = e["start"] + e["dur"]
        if stop > end:
            total += stop - max(e["start"], end)
            end = stop
    return total * 1e-6


def span_seconds(events: list[dict[str, Any]]) -> float:
    """Seconds from the first event's start to the last one's end."""
    if not events:
        return 0.0
    return (max(e["start"] + e["dur"] for e in events) - min(e["start"] for e in events)) * 1e-6


def category_table(hlo: Hlo, events: list[dict[str, Any]], steps: int) -> dict[str, dict]:
    """Per category: seconds per step, FLOPs and bytes per step (from the HLO shapes)."""
    table = {c: {"seconds": 0.0, "flops": 0.0, "bytes": 0.0, "ops": 0} for c in CATEGORIES}
    previous: dict[Any, tuple[str, str]] = {}  # line -> (op, kernel) of its last event
    for event in sorted(events, key=lambda e: e["start"]):
        # One instruction may launch different kernels in a row (a GEMM and its split-K
        # reduction): its FLOPs and bytes count once; the same kernel again is a new run.
        op, kernel = previous.get(event["line"], ("", ""))
        event["first"] = op != event["op"] or kernel == event["kernel"]
        previous[event["line"]] = (event["op"], event["kernel"])
    for event, share in zip(events, apportion(events)):
        row = table[hlo.category(event["op"])]
        row["seconds"] += share * 1e-6 / steps
        row["ops"] += event["first"]
        instr = hlo.instrs.get(event["op"])
        if instr is not None and event["first"]:
            row["flops"] += hlo.flops(instr) / steps
            row["bytes"] += hlo.bytes(instr) / steps
    return table
