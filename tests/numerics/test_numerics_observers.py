import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

from onnxq.numerics.affine import (
    QTYPES,
    choose_qparams,
    fake_quantize,
    mse_weight_ranges,
    quantize,
    sqnr_db,
)
from onnxq.numerics.observers import (
    ChannelMeanObserver,
    HistogramObserver,
    MinMaxObserver,
    make_observer,
)


def test_asymmetric_nonnegative_range_has_zero_point_at_qmin():
    scale, zp = choose_qparams(0.0, 6.0, QTYPES["uint8"], symmetric=False)
    assert zp == 0 and np.isclose(scale, 6.0 / 255)


def test_symmetric_int8_is_narrow_range_with_zero_point_zero():
    scale, zp = choose_qparams(np.array([-2.0, -1.0]), np.array([1.0, 4.0]), QTYPES["int8"], True)
    np.testing.assert_allclose(scale, [2.0 / 127, 4.0 / 127], rtol=1e-6)
    assert (zp == 0).all()


def test_quantize_matches_onnxruntime_quantizelinear():
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32) * 3
    scale, zp = np.float32(0.05), np.uint8(120)
    node = ir.node("QuantizeLinear", [ir.val("x", ir.DataType.FLOAT, [2, 3, 4]),
                                     ir.Value(name="s", const_value=ir.tensor(scale)),
                                     ir.Value(name="z", const_value=ir.tensor(zp))])
    node.outputs[0].name = "y"
    graph = ir.Graph([node.inputs[0]], node.outputs, nodes=[node],
                     initializers=[node.inputs[1], node.inputs[2]], opset_imports={"": 17})
    proto = ir.to_proto(ir.Model(graph, ir_version=8)).SerializeToString()
    session = ort.InferenceSession(proto, providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": x})[0]
    ours = quantize(x, np.array(scale), np.array(zp), QTYPES["uint8"])
    np.testing.assert_array_equal(ours, expected.astype(np.int64))


def test_mse_weight_ranges_reduce_int4_error_on_heavy_tails():
    w = np.random.default_rng(1).standard_t(3, size=(8, 64)).astype(np.float32)
    grid = QTYPES["int4"]
    lo, hi = mse_weight_ranges(w, 0, grid)
    s_mse, z_mse = choose_qparams(lo, hi, grid, True)
    s_mm, z_mm = choose_qparams(w.min(1), w.max(1), grid, True)
    assert sqnr_db(w, fake_quantize(w, s_mse, z_mse, grid, 0)) > \
        sqnr_db(w, fake_quantize(w, s_mm, z_mm, grid, 0)) + 0.5


def test_histogram_streams_with_fixed_memory_and_exact_counts():
    observer = HistogramObserver("percentile", bins=512)
    rng = np.random.default_rng(0)
    for i in range(30):
        observer.update(rng.standard_normal(5000) * (1 + i))
    assert observer.counts.size == 512
    assert observer.counts.sum() == 30 * 5000
    edges = (np.arange(512) + observer.first) * observer.width
    assert edges[0] <= observer.lo and observer.hi < edges[-1] + observer.width


def test_histogram_bins_agree_with_numpy_after_merging():
    data = [np.linspace(-1, 1, 1001), np.linspace(-40, 40, 1001)]
    observer = HistogramObserver("mse", bins=256)
    for chunk in data:
        observer.update(chunk)
    edges = (np.arange(257) + observer.first) * observer.width
    expected, _ = np.histogram(np.concatenate(data), bins=edges)
    np.testing.assert_array_equal(observer.counts, expected)


def _uint8_mse(x: np.ndarray, lo: float, hi: float) -> float:
    grid = QTYPES["uint8"]
    scale, zp = choose_qparams(lo, hi, grid, False)
    return float(np.mean((fake_quantize(x, scale, zp, grid) - x) ** 2))


def test_mse_observer_beats_minmax_on_heavy_tails():
    x = np.random.default_rng(0).standard_t(2, 200_000).astype(np.float32)
    mm, mse = MinMaxObserver(), make_observer("mse")
    mm.update(x)
    mse.update(x)
    grid = QTYPES["uint8"]
    assert _uint8_mse(x, *mse.range(grid, False)) < 0.8 * _uint8_mse(x, *mm.range(grid, False))


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_clipping_observers_clip_rare_outliers(method):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(200_000), [80.0, -60.0]]).astype(np.float32)
    observer = make_observer(method)
    observer.update(x)
    lo, hi = observer.range(QTYPES["uint8"], False)
    assert -10 < lo < -3 and 3 < hi < 10


def test_channel_mean_observer_matches_numpy():
    x = (np.random.default_rng(0).standard_normal((6, 4, 5, 5)).astype(np.float32)
         + np.arange(4)[:, None, None])
    observer = ChannelMeanObserver()
    observer.update(x[:2])
    observer.update(x[2:])
    np.testing.assert_allclose(observer.mean, x.mean(axis=(0, 2, 3)), atol=1e-5)
