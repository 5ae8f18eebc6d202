"""Turn a ``--calib``/``--data`` argument into a data source for a given model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx_ir as ir

from onnxq.errors import OnnxqError
from onnxq.io.data import (
    IMAGE_SUFFIXES,
    ImageFolder,
    ImagePreprocess,
    NpzArrays,
    NpzFolder,
    RandomData,
    model_inputs,
)


@dataclasses.dataclass(frozen=True)
class ImageOptions:
    """Image preprocessing as given on the command line (None: derived from the model)."""

    size: int | None = None
    resize: int | None = None
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    bgr: bool = False
    layout: str = "auto"


def image_preprocess(model: ir.Model, options: ImageOptions) -> tuple[str, ImagePreprocess]:
    """The image input's name and the preprocessing that fits its shape."""
    inputs = model_inputs(model)
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].dtype.kind != "f":
        raise OnnxqError("image calibration needs a model with one float 4-D image input; "
                         "use an .npz file for other models")
    shape = inputs[0].shape
    nhwc = options.layout == "nhwc" or (
        options.layout == "auto" and shape[-1] in (1, 3) and shape[1] not in (1, 3))
    spatial = shape[1] if nhwc else shape[2]
    size = options.size or (spatial if isinstance(spatial, int) else 224)
    resize = options.resize or round(size * 256 / 224)
    return inputs[0].name, ImagePreprocess(size, resize, options.mean, options.std,
                                           options.bgr, nhwc)


def open_source(spec: str, model: ir.Model, options: ImageOptions, samples: int | None,
                seed: int):
    """A data source for ``spec``: an image folder, .npz file, .npz folder, or 'random'."""
    if spec == "random":
        return RandomData(model_inputs(model), samples or 8, seed)
    path = Path(spec)
    if not path.exists():
        raise OnnxqError(f"calibration data not found: {path} (pass a folder of images, an .npz "
                         "file, a folder of .npz files, or 'random')")
    if path.is_file():
        if path.suffix != ".npz":
            raise OnnxqError(f"unsupported calibration file {path}: use an .npz file whose "
                             "arrays are keyed by input name")
        return NpzArrays(path, samples, seed)
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir()):
        name, preprocess = image_preprocess(model, options)
        return ImageFolder(path, name, preprocess, samples, seed)
    if any(path.glob("*.npz")):
        return NpzFolder(path, model_inputs(model), samples, seed)
    raise OnnxqError(f"calibration folder {path} is empty: it holds no images and no .npz "
                     "files")
