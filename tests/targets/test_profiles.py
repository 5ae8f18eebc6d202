"""Target profiles as data: the shipped files, --target-file overrides, what a config takes."""

from __future__ import annotations

import pytest

from onnxq.config import QuantConfig
from onnxq.errors import OnnxqError
from onnxq.targets.profile import RUNTIMES, load_target, targets


def test_every_shipped_target_loads_with_a_runtime_and_a_default_type():
    assert targets() == ["openvino-cpu", "ort-cpu", "ort-gpu", "qnn-htp", "tensorrt"]
    for name in targets():
        profile = load_target(name)
        assert profile.name == name and profile.runtime in RUNTIMES
        config = QuantConfig(target=profile)
        assert config.activations == profile.activations[0]
        assert config.weights == profile.weights[0]


def test_the_target_decides_the_defaults():
    assert QuantConfig().activations == "uint8"
    assert QuantConfig(target=load_target("tensorrt")).activations == "int8"
    assert QuantConfig(weights="int4").int4_storage == "int8"  # ort-cpu: 8-bit kernels
    assert QuantConfig(weights="int4", activations="uint16").int4_storage == "packed"
    qnn = QuantConfig(target=load_target("qnn-htp"), weights="int4")
    assert qnn.int4_storage == "packed" and not qnn.keep_fragile_float


@pytest.mark.parametrize("kwargs, needle", [
    ({"target": "tensorrt", "activations": "uint8"}, "--target tensorrt does not run uint8"),
    ({"target": "openvino-cpu", "weights": "int4"}, "does not run int4 weights"),
    ({"target": "tensorrt", "min_sqnr": 30.0}, "--min-sqnr moves activations to int16"),
    ({"weights": "int4", "activations": "uint4", "int4_storage": "int8"},
     "--int4-storage int8 runs int4 weights on 8-bit kernels"),
])
def test_a_config_the_target_cannot_run_is_refused(kwargs, needle):
    kwargs = dict(kwargs)
    target = load_target(kwargs.pop("target", "ort-cpu"))
    with pytest.raises(OnnxqError, match=needle):
        QuantConfig(target=target, **kwargs)


def test_a_target_file_overrides_entries(tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text('per_tensor_weights = ["Conv"]\nquantize_bias = false\n')
    profile = load_target("ort-cpu", path)
    assert profile.per_tensor_weights == ("Conv",) and not profile.quantize_bias
    assert profile.weights == load_target("ort-cpu").weights  # the rest as shipped


@pytest.mark.parametrize("text, needle", [
    ("quantize_bias = 1\n", "entry 'quantize_bias' must be a TOML boolean"),
    ("per_tensor = []\n", "unknown entry 'per_tensor'"),
    ('activations = ["uint3"]\n', "activations 'uint3' is not one of"),
    ("weights = [\n", "cannot read --target-file"),
    ("[fixed_qparams.Sigmoid]\nuint16 = [0, 0]\n", "must be [scale > 0, zero point]"),
])
def test_a_bad_target_file_is_one_clear_error(tmp_path, text, needle):
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(OnnxqError, match=needle.replace("[", r"\[")):
        load_target("qnn-htp", path)


def test_an_unknown_target_names_the_known_ones():
    with pytest.raises(OnnxqError, match="unknown target 'snpe'; use one of openvino-cpu"):
        load_target("snpe")
