"""Static checks of an exported ONNX graph: op census, TensorRT-parser compatibility, and that the
score side branch never reads a block's main attention softmax (so fusion stays possible)."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from importlib import resources

import onnx

MAX_TRT_OPSET = 20
TRT_TABLE_SOURCE = "onnx-tensorrt docs/operators.md at the ONNX-TensorRT 10.1 GA release (TensorRT 10.x, opsets 9-20)"


def trt_supported_ops() -> dict[str, str]:
    """op -> restrictions, for the ops TensorRT 10's ONNX parser supports (package data)."""
    text = resources.files("amo_engine").joinpath("data/tensorrt_onnx_ops.tsv").read_text(encoding="utf-8")
    ops: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#") or line.startswith("operator\t"):
            continue
        cols = line.split("\t")
        if len(cols) >= 2 and cols[1].strip() == "Y":
            ops[cols[0].strip()] = cols[3].strip() if len(cols) > 3 else ""
    return ops


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            for g in attr.graphs:
                yield from _all_nodes(g)


def op_census(model: onnx.ModelProto) -> dict[str, int]:
    counts = collections.Counter(f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                                 for n in _all_nodes(model.graph))
    return dict(sorted(counts.items()))


def _float64_tensors(model: onnx.ModelProto) -> list[str]:
    double = onnx.TensorProto.DOUBLE
    found = [t.name for t in model.graph.initializer if t.data_type == double]
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if vi.type.tensor_type.elem_type == double:
            found.append(vi.name)
    for node in _all_nodes(model.graph):
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == double:
                found.append(f"Cast->float64 ({node.name})")
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == double:
                found.append(f"{node.op_type} constant ({node.name})")
    return found


@dataclass
class GraphReport:
    opset: int
    census: dict[str, int]
    unsupported_ops: list[str]
    float64: list[str]
    main_softmax: int  # softmaxes whose only consumer is the attention-value MatMul
    score_softmax: int  # softmaxes of the span-score side branch
    shared_softmax: list[str]  # softmaxes read both by a MatMul and something else (breaks fusion)
    softmax_outputs: list[str]  # softmaxes exposed as graph outputs (breaks fusion)
    restrictions: dict[str, str] = field(default_factory=dict)

    @property
    def trt_ok(self) -> bool:
        return not self.unsupported_ops and not self.float64 and self.opset <= MAX_TRT_OPSET

    @property
    def fusion_ok(self) -> bool:
        return not self.shared_softmax and not self.softmax_outputs

    def problems(self) -> list[str]:
        out = []
        if self.opset > MAX_TRT_OPSET:
            out.append(f"opset {self.opset} > {MAX_TRT_OPSET} (TensorRT 10 parser range): export with --opset 18")
        if self.unsupported_ops:
            out.append(f"ops outside TensorRT's ONNX parser list: {self.unsupported_ops}")
        if self.float64:
            out.append(f"float64 tensors: {self.float64[:5]}")
        if self.shared_softmax:
            out.append(f"attention softmax read by other nodes besides its MatMul: {self.shared_softmax[:5]}")
        if self.softmax_outputs:
            out.append(f"softmax exposed as graph output: {self.softmax_outputs}")
        return out

    def to_json(self) -> dict:
        return {
            "opset": self.opset,
            "census": self.census,
            "trt_ok": self.trt_ok,
            "trt_table": TRT_TABLE_SOURCE,
            "unsupported_ops": self.unsupported_ops,
            "float64": self.float64,
            "fusion_ok": self.fusion_ok,
            "main_softmax": self.main_softmax,
            "score_softmax": self.score_softmax,
            "restrictions": self.restrictions,
        }


def check_graph(model: onnx.ModelProto) -> GraphReport:
    """Census, TensorRT op/type/opset support and softmax-fusion structure of ``model``."""
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    census = op_census(model)
    supported = trt_supported_ops()
    unsupported = sorted(op for op in census if op not in supported)
    restrictions = {op: supported[op] for op in census if supported.get(op)}

    consumers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    nodes = list(_all_nodes(model.graph))
    for node in nodes:
        for name in node.input:
            consumers[name].append(node)
    graph_outputs = {o.name for o in model.graph.output}
    main = score = 0
    shared, exposed = [], []
    for node in nodes:
        if node.op_type != "Softmax":
            continue
        out = node.output[0]
        users = consumers.get(out, [])
        kinds = {u.op_type for u in users}
        if out in graph_outputs:
            exposed.append(node.name or out)
        if "MatMul" in kinds:
            if len(users) == 1:
                main += 1
            else:
                shared.append(node.name or out)
        else:
            score += 1
    return GraphReport(opset, census, unsupported, _float64_tensors(model), main, score, shared, exposed, restrictions)
