"""Loading and atomically saving ONNX models through onnx_ir (external data aware).

Models are untrusted input: external data is read only from regular files inside the
model's own folder (the rule of ``onnx.checker``, ONNX Runtime and onnx_ir), and that is
checked for every tensor before any of them is read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import onnx_ir as ir

from onnxq.errors import OnnxqError
from onnxq.io.tempfiles import TempDir

EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    """Every tensor the model holds: initializers and tensor attributes, subgraphs included."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value.const_value
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.TENSOR:
                    yield attr.value
                elif attr.type == ir.AttributeType.TENSORS:
                    yield from attr.value


def external_folder(model: ir.Model) -> str | None:
    """The folder the model's external data is read from, or None when it has none."""
    for tensor in tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            return os.fspath(tensor.base_dir)
    return None


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_external_data(model: ir.Model, folder: Path) -> None:
    """Refuse external data that is not a regular file inside ``folder`` (no ``..``, no
    absolute path, no symlink or hard link leading elsewhere), missing, or too short."""
    fix = "keep the weights file inside the model's folder (a real file, not a link)"
    base = os.path.normpath(str(folder))
    base_real = os.path.realpath(base)
    for tensor in tensors(model):
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        location = os.fspath(tensor.location)
        where = f"external data '{location}' of tensor '{tensor.name}'"
        path = os.path.normpath(os.path.join(base, location))
        if os.path.isabs(location) or not _inside(path, base):
            raise OnnxqError(f"{where} lies outside the model's folder {base}; refused "
                             f"(models may only read files beside them): {fix}")
        if not _inside(os.path.realpath(path), base_real):
            raise OnnxqError(f"{where} is a symlink to a file outside the model's folder "
                             f"{base}; refused: {fix}")
        if not os.path.isfile(path):
            raise OnnxqError(f"{where} is missing: keep the .data file next to the model")
        stat = os.stat(path)
        if stat.st_nlink > 1:
            raise OnnxqError(f"{where} is a hard-linked file; refused: {fix}")
        end = (tensor.offset or 0) + tensor.nbytes
        if end > stat.st_size:
            raise OnnxqError(f"{where} is truncated ({stat.st_size} bytes, the tensor needs "
                             f"bytes up to {end}); copy the complete .data file")


def _without_external_data(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with every external tensor made empty, for the checker (reads no data)."""
    def empty(tensor: onnx.TensorProto) -> None:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.dims[:]
            tensor.dims.append(0)

    def strip(graph: onnx.GraphProto) -> None:
        for tensor in graph.initializer:
            empty(tensor)
        for node in graph.node:
            for attr in node.attribute:
                for tensor in [attr.t] if attr.HasField("t") else list(attr.tensors):
                    empty(tensor)
                for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                    strip(sub)

    strip(proto.graph)
    return proto


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """``ir.to_proto`` with one line for what ONNX cannot represent (bad text, bad types)."""
    try:
        return ir.to_proto(model)
    except Exception as exc:  # noqa: BLE001 - onnx_ir wraps any cause in a SerdeError
        cause = exc.__cause__ or exc
        reason = " ".join(str(cause).split())[:160] or type(cause).__name__
        raise OnnxqError(f"the model holds fields ONNX cannot represent ({reason}); fix or "
                         "re-export it") from None


def check_model(model: ir.Model, path: Path | str) -> None:
    """Run ``onnx.checker`` (without reading external data); one line when it fails."""
    try:
        onnx.checker.check_model(_without_external_data(to_proto(model)))
    except (onnx.checker.ValidationError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise OnnxqError(f"{path} fails the ONNX checker ({reason}); fix or re-export the "
                         "model") from None


def load_model(path: str | os.PathLike) -> ir.Model:
    """Load an ONNX model (with any external data) into onnx_ir, with one-line errors.

    The path is made absolute first, so that external data is always resolved, and
    contained, relative to the model's own folder; no external data is read here.
    """
    path = Path(path).absolute()
    if not path.exists():
        raise OnnxqError(f"model file not found: {path} (check the path)")
    if not path.is_file():
        raise OnnxqError(f"model path is not a file: {path} (pass the .onnx file itself)")
    if path.stat().st_size == 0:
        raise OnnxqError(f"model file is empty: {path} (re-export the model)")
    try:
        model = ir.load(path)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several unrelated types
        raise OnnxqError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}); "
            "re-export it, or if it is over 2 GB save it with external data"
        ) from None
    if len(model.graph) == 0 and not model.graph.outputs:
        raise OnnxqError(f"{path} holds no ONNX graph (is it really an .onnx model?)")
    check_external_data(model, path.parent)
    check_inline_tensors(model, path)
    return model


def check_inline_tensors(model: ir.Model, path: Path) -> None:
    """Refuse tensors whose stored bytes do not fit their type and shape (numpy views of
    the loaded bytes: nothing is copied)."""
    for tensor in tensors(model):
        if isinstance(tensor, ir.ExternalTensor):
            continue
        try:
            tensor.numpy()
        except Exception as exc:  # noqa: BLE001 - onnx_ir raises ValueError, TypeError, ...
            reason = " ".join(str(exc).split())[:120] or type(exc).__name__
            raise OnnxqError(f"tensor '{tensor.name}' of {path} holds data that does not fit "
                             f"its type and shape ({reason}); re-export the model") from None


def model_nbytes(model: ir.Model, external: bool = True) -> int:
    """Total bytes held by the model's initializers (``external=False``: those held in
    memory or inline, not in external data files)."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values()
               if v.const_value is not None
               and (external or not isinstance(v.const_value, ir.ExternalTensor)))


def _write_error(path: Path, exc: OSError) -> OnnxqError:
    reason = exc.strerror or type(exc).__name__
    return OnnxqError(f"cannot write {path} ({reason}); free disk space or choose another "
                      "-o path (nothing was written)")


def check_output_folder(path: Path, option: str = "-o") -> Path:
    """The folder ``path`` will be written in, refused when it is missing or read-only."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise OnnxqError(f"output folder does not exist: {directory} (create it first)")
    if not os.access(directory, os.W_OK):
        raise OnnxqError(f"output folder is not writable: {directory} (choose another "
                         f"{option} path)")
    return directory


def save_model(model: ir.Model, path: str | os.PathLike,
               verify: Callable[[Path], None] | None = None, external: bool = False) -> Path:
    """Write ``model`` atomically, with its weights in ``NAME.data`` beside it when
    ``external`` (a model read from external data is written so) or the model nears the
    2 GB protobuf limit.  ``verify(temporary_path)`` runs on the written file
    before it takes ``path``'s place: if it raises, nothing is left at ``path``."""
    path = Path(path)
    directory = check_output_folder(path)
    external = external or model_nbytes(model) > EXTERNAL_DATA_THRESHOLD
    data_name = path.name + ".data"
    try:
        with TempDir("write", directory) as tmp:
            tmp_path = tmp / path.name
            if external:
                ir.save(model, tmp_path, external_data=data_name)
            else:
                ir.save(model, tmp_path)
            if verify is not None:
                verify(tmp_path)
            if external:
                os.replace(tmp / data_name, directory / data_name)
            os.replace(tmp_path, path)
    except OSError as exc:
        raise _write_error(path, exc) from None
    return path
