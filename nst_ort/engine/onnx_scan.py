"""Read the external-data locations and the input/output names of an ONNX file without the onnx
package (the runtime has none).

Protocol-buffer wire format, only the fields on the path to a TensorProto's external_data:
ModelProto.graph (7) -> GraphProto.initializer (5), .node (1) -> NodeProto.attribute (5) ->
AttributeProto.t (5) / .tensors (11) / .g (6) / .graphs (10); GraphProto.sparse_initializer (15)
-> SparseTensorProto.values (1) / .indices (2); ModelProto.functions (25) -> FunctionProto.node (7).
TensorProto.external_data (13) -> StringStringEntryProto key (1) / value (2).
"""
from __future__ import annotations


class ScanError(ValueError):
    pass


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= len(buf):
            raise ScanError("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift > 63:
            raise ScanError("varint too long")


def _fields(buf: bytes):
    """Yield (field number, wire type, value) where value is bytes for length-delimited fields."""
    i, n = 0, len(buf)
    while i < n:
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = None, i + 8
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > n:
                raise ScanError("truncated field")
            value, i = buf[i:i + length], i + length
        elif wire == 5:
            value, i = None, i + 4
        else:
            raise ScanError(f"unsupported wire type {wire}")
        if i > n:
            raise ScanError("truncated message")
        yield field, wire, value


def _tensor_locations(buf: bytes, out: list[dict]) -> None:
    entry: dict[str, str] = {}
    for field, wire, value in _fields(buf):
        if field == 13 and wire == 2:
            key = val = None
            for f2, w2, v2 in _fields(value):
                if f2 == 1 and w2 == 2:
                    key = bytes(v2).decode("utf-8", "replace")
                elif f2 == 2 and w2 == 2:
                    val = bytes(v2).decode("utf-8", "replace")
            if key is not None and val is not None:
                entry[key] = val
    if "location" in entry:
        out.append(entry)


def _attribute(buf: bytes, out: list[str]) -> None:
    for field, wire, value in _fields(buf):
        if wire != 2:
            continue
        if field in (5, 11):
            _tensor_locations(value, out)
        elif field in (6, 10):
            _graph(value, out)


def _node(buf: bytes, out: list[str]) -> None:
    for field, wire, value in _fields(buf):
        if field == 5 and wire == 2:
            _attribute(value, out)


def _graph(buf: bytes, out: list[str]) -> None:
    for field, wire, value in _fields(buf):
        if wire != 2:
            continue
        if field == 5:
            _tensor_locations(value, out)
        elif field == 1:
            _node(value, out)
        elif field == 15:
            for f2, w2, v2 in _fields(value):
                if f2 in (1, 2) and w2 == 2:
                    _tensor_locations(v2, out)


def external_locations(model_bytes: bytes) -> list[str]:
    """Every external-data location an ONNX model names (raises ScanError if it is not a model)."""
    return [e["location"] for e in external_data(model_bytes)]


def external_data(model_bytes: bytes) -> list[dict[str, str]]:
    """Every tensor's external-data entries: {"location": ..., and "offset", "length" where given}."""
    out: list[dict] = []
    saw_graph = False
    for field, wire, value in _fields(memoryview(model_bytes)):  # slices without copies
        if field == 7 and wire == 2:
            saw_graph = True
            _graph(value, out)
        elif field == 25 and wire == 2:
            for f2, w2, v2 in _fields(value):
                if f2 == 7 and w2 == 2:
                    _node(v2, out)
    if not saw_graph:
        raise ScanError("no graph in the file")
    return out


def graph_io(model_bytes: bytes) -> tuple[list[str], list[str]]:
    """The graph's input and output names (ModelProto.graph -> GraphProto.input (11) / .output (12)
    -> ValueInfoProto.name (1)); raises ScanError if it is not a model."""
    inputs: list[str] = []
    outputs: list[str] = []
    for field, wire, value in _fields(model_bytes):
        if field == 7 and wire == 2:
            for f2, w2, v2 in _fields(value):
                if f2 in (11, 12) and w2 == 2:
                    name = next((v3.decode("utf-8", "replace") for f3, w3, v3 in _fields(v2) if f3 == 1 and w3 == 2), "")
                    (inputs if f2 == 11 else outputs).append(name)
    return inputs, outputs


def _dims(type_proto: bytes) -> list[int | None]:
    """TypeProto.tensor_type (1) -> .shape (2) -> TensorShapeProto.dim (1) -> dim_value (1) | dim_param
    (2): a number, or None for a symbolic or unknown dimension."""
    dims: list[int | None] = []
    for f, w, tensor in _fields(type_proto):
        if f == 1 and w == 2:
            for f2, w2, shape in _fields(tensor):
                if f2 == 2 and w2 == 2:
                    for f3, w3, dim in _fields(shape):
                        if f3 == 1 and w3 == 2:
                            value = None
                            for f4, w4, v4 in _fields(dim):
                                if f4 == 1 and w4 == 0:
                                    value = v4 - (1 << 64) if v4 >= 1 << 63 else v4
                            dims.append(value)
    return dims


def graph_signature(model_bytes: bytes) -> tuple[list[tuple[str, list]], list[tuple[str, list]]]:
    """The graph's inputs and outputs as (name, dims) in order, dims as _dims gives them (ValueInfoProto
    .name (1), .type (2)); raises ScanError if it is not a model."""
    inputs: list = []
    outputs: list = []
    saw_graph = False
    for field, wire, value in _fields(memoryview(model_bytes)):  # slices without copies
        if field == 7 and wire == 2:
            saw_graph = True
            for f2, w2, v2 in _fields(value):
                if f2 in (11, 12) and w2 == 2:
                    name, dims = "", []
                    for f3, w3, v3 in _fields(v2):
                        if f3 == 1 and w3 == 2:
                            name = bytes(v3).decode("utf-8", "replace")
                        elif f3 == 2 and w3 == 2:
                            dims = _dims(v3)
                    (inputs if f2 == 11 else outputs).append((name, dims))
    if not saw_graph:
        raise ScanError("no graph in the file")
    return inputs, outputs
