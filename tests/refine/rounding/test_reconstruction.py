"""Subgraph cutting, the torch evaluator on real blocks, learned rounding and its write-back."""

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

from onnxq.analysis.validate import compare
from onnxq.api import quantize
from onnxq.calibrate.stream import calibrate
from onnxq.config import PRESETS, QuantConfig
from onnxq.emit.simulate import quantized_copy
from onnxq.errors import OnnxqError
from onnxq.io.model_io import load_model
from onnxq.models.synthetic import image_feeds
from onnxq.numerics.affine import sqnr_db
from onnxq.plan.annotate import annotate
from onnxq.plan.qparams import resolve_activations, resolve_weights
from onnxq.prepare.stage import prepare
from onnxq.refine.rounding.blocks import cut_blocks
from onnxq.refine.rounding.learned_rounding import LearnedRoundingPass
from onnxq.refine.rounding.reconstruct import RoundingConfig
from onnxq.refine.rounding.torch_block import TorchBlock


def ort_outputs(model: ir.Model, names: list[str], feed: dict) -> dict[str, np.ndarray]:
    """Intermediate tensors from ORT with graph optimizations off (plain DQ -> float ops)."""
    copy = ir.from_proto(ir.to_proto(model))
    values = {v.name: v for node in copy.graph for v in node.outputs}
    copy.graph.outputs.extend(values[n] for n in names if n not in
                              {v.name for v in copy.graph.outputs})
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(ir.to_proto(copy).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, feed), strict=True))


def calibrated(path, config, feeds):
    model = load_model(path)
    prepare(model, config)
    plan = annotate(model, config)
    qparams = resolve_activations(plan, calibrate(model, plan, feeds))
    return model, plan, qparams, resolve_weights(model, plan)


def test_lite0_cuts_into_residual_blocks(lite0):
    config = QuantConfig()
    model = load_model(lite0)
    prepare(model, config)
    plan = annotate(model, config)
    blocks = cut_blocks(model.graph, plan, min_layers=3)
    assert sum(len(b.layers) for b in blocks) == len(plan.weights) == 50
    assert all(len(b.inputs) == 1 for b in blocks)  # the flatten's batch size is read locally
    residual = [b for b in blocks if any(n.op_type == "Add" for n in b.nodes)]
    assert len(residual) == 9 and all(len(b.layers) == 3 for b in residual)
    assert [len(b.layers) for b in cut_blocks(model.graph, plan)].count(1) > 20


def test_lite0_block_matches_onnxruntime_fp32_and_quantized(lite0, imagenet_sample):
    from onnxq.io.data import ImageFolder
    from onnxq.models.efficientnet_lite import INPUT_NAME, PREPROCESS

    images = list(ImageFolder(imagenet_sample / "calib", INPUT_NAME, PREPROCESS, samples=8))
    config = QuantConfig(weights="int4")
    model, plan, qparams, weights = calibrated(lite0, config, images)
    block = next(b for b in cut_blocks(model.graph, plan, 3)
                 if any(n.op_type == "Add" for n in b.nodes))
    feed = {INPUT_NAME: np.concatenate([f[INPUT_NAME] for f in images[:4]])}
    module = TorchBlock(block, plan, qparams, weights, learn_bias=False)
    module.set_soft(False)
    (name_in,), (name_out,) = block.inputs, block.outputs
    for quantized, network in ((False, model), (True, quantized_copy(model, plan, qparams,
                                                                      weights))):
        expected = ort_outputs(network, [name_in, name_out], feed)
        with torch.no_grad():
            got = module({name_in: torch.from_numpy(expected[name_in])}, quantized)[name_out]
        assert sqnr_db(expected[name_out], got.numpy()) > (80 if not quantized else 60)


@pytest.mark.parametrize("method", ["adaround", "brecq", "qdrop"])
def test_learned_rounding_beats_nearest_on_int4(small_cnn, tmp_path, method):
    errors = {}
    for rounding in ("nearest", method):
        out = tmp_path / f"{rounding}.onnx"
        config = QuantConfig.from_preset("fast", weights="int4", rounding=rounding, iters=60)
        report = quantize(small_cnn, out, image_feeds(64), config, quiet=True)
        result = compare(load_model(small_cnn), load_model(out), image_feeds(64, seed=1))
        errors[rounding] = result.outputs[0].sqnr_db
        onnx.checker.check_model(str(out), full_check=True)
    assert errors[method] > errors["nearest"] + 1.0
    assert report.reconstruction and all(r["loss_learned"] <= r["loss_nearest"]
                                         for r in report.reconstruction if r["layers"])


@pytest.mark.parametrize("learn_scale", [False, True])
def test_write_back_puts_the_learned_integers_in_the_qdq_model(small_cnn, learn_scale):
    config = QuantConfig.from_preset("fast", weights="int4", rounding="brecq", iters=30)
    feeds = image_feeds(32)
    model, plan, qparams, weights = calibrated(small_cnn, config, feeds)
    start = {name: params.scale.copy() for name, params in weights.items()}
    rounding = LearnedRoundingPass(plan, qparams, weights, feeds,
                                   RoundingConfig(method="brecq", iters=30,
                                                  learn_scale=learn_scale))
    assert rounding(model).modified
    moved = [not np.array_equal(weights[name].scale, scale) for name, scale in start.items()]
    assert any(moved) == learn_scale  # learned scales reach the emitted qparams
    learned = {name: model.graph.initializers[name].const_value.numpy().copy()
               for name in plan.weights}
    emitted = quantized_copy(model, plan, qparams, weights)
    for name, value in learned.items():
        q = emitted.graph.initializers[f"{name}_quantized"].const_value.numpy().astype(np.float32)
        scale = weights[name].scale.reshape([-1] + [1] * (q.ndim - 1)) if q.ndim > 1 else \
            weights[name].scale.reshape(-1)
        if weights[name].axis == 1:
            scale = weights[name].scale.reshape(1, -1, *[1] * (q.ndim - 2))
        np.testing.assert_allclose(q * scale, value, rtol=0, atol=1e-6)
    # the ORT run of the emitted model equals the torch evaluator chaining every learned block
    feed = {"image": np.concatenate([f["image"] for f in image_feeds(4, seed=3)])}
    env = {"image": torch.from_numpy(feed["image"])}
    for block in cut_blocks(model.graph, plan, 3):
        module = TorchBlock(block, plan, qparams, weights, learn_bias=False)
        module.set_soft(False)
        with torch.no_grad():
            env.update(module({n: env[n] for n in block.inputs}, quantized=True))
    output = model.graph.outputs[0].name
    expected = ort_outputs(emitted, [output], feed)[output]
    assert sqnr_db(expected, env[output].numpy()) > 45


def test_spilling_the_caches_to_disk_gives_the_same_rounding(small_cnn):
    config = QuantConfig.from_preset("fast", weights="int4")
    feeds = image_feeds(32)
    learned = []
    for cache_mb in (None, 0):
        model, plan, qparams, weights = calibrated(small_cnn, config, feeds)
        LearnedRoundingPass(plan, qparams, weights, feeds,
                            RoundingConfig(iters=20, cache_mb=cache_mb))(model)
        learned.append({name: model.graph.initializers[name].const_value.numpy().copy()
                        for name in plan.weights})
    for name, value in learned[0].items():
        np.testing.assert_array_equal(learned[1][name], value)


def test_block_with_unknown_op_falls_back_to_nearest_with_a_note(tmp_path):
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, 8, 8] image) => (float[N, 4, 8, 8] y) {
        c = Conv <pads = [1, 1, 1, 1]> (image, w1)
        s = Softplus (c)
        d = Conv (s, w2)
        e = Relu (d)
        y = Conv (e, w3)
    }
    """
    proto = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    proto.graph.initializer.extend(onnx.numpy_helper.from_array(
        rng.standard_normal(shape).astype(np.float32), name) for name, shape in
        [("w1", (4, 3, 3, 3)), ("w2", (4, 4, 1, 1)), ("w3", (4, 4, 1, 1))])
    path = tmp_path / "softplus.onnx"
    onnx.save(proto, path)
    feeds = [{"image": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(16)]
    report = quantize(path, tmp_path / "q.onnx", feeds, QuantConfig.from_preset(
        "fast", weights="int4", rounding="adaround", iters=10), quiet=True)
    notes = [r["note"] for r in report.reconstruction if r["note"]]
    assert notes and "Softplus" in notes[0] and "round-to-nearest" in notes[0]
    onnx.checker.check_model(str(tmp_path / "q.onnx"), full_check=True)


def test_mean_preserving_rounding_keeps_channel_sums():
    from onnxq.numerics.affine import QTYPES, mean_preserving_round
    from onnxq.refine.precalibrate import kl_scales

    grid = QTYPES["int4"]
    rows = np.random.default_rng(0).standard_normal((6, 200)) * np.arange(1, 7)[:, None]
    scale = kl_scales(rows, grid).astype(np.float64)
    q = mean_preserving_round(rows, scale, np.zeros(len(rows), np.int64), grid)
    nearest = np.clip(np.round(rows / scale[:, None]), grid.qmin, grid.qmax)
    assert np.all(np.abs((q - rows / scale[:, None]).sum(axis=1)) <= 0.5 + 1e-9)
    assert np.abs(q - nearest).sum() > 0 and np.abs(q - nearest).max() == 1
    short = rows[:, :9]  # depthwise-sized rows keep min-max scales
    np.testing.assert_allclose(kl_scales(short, grid), np.abs(short).max(axis=1) / 7, rtol=1e-6)


def test_calibration_free_precalibration_beats_nearest_weight_only(small_cnn, tmp_path):
    sqnr = {}
    for precalibrate in (False, True):
        out = tmp_path / f"w{precalibrate}.onnx"
        config = QuantConfig.from_preset("fast", weights="int4", activations="none",
                                         bias_correction="none", precalibrate=precalibrate)
        quantize(small_cnn, out, None, config, quiet=True)
        model = load_model(out)
        assert not any(n.op_type == "QuantizeLinear" for n in model.graph)  # weights only
        sqnr[precalibrate] = compare(load_model(small_cnn), model,
                                     image_feeds(64, seed=1)).outputs[0].sqnr_db
    assert sqnr[True] > sqnr[False] + 3.0


def test_reconstruction_on_random_crops_still_lowers_every_block_loss(small_cnn):
    config = QuantConfig.from_preset("fast", weights="int4")
    feeds = image_feeds(32)
    model, plan, qparams, weights = calibrated(small_cnn, config, feeds)
    rounding = LearnedRoundingPass(plan, qparams, weights, feeds,
                                   RoundingConfig(method="brecq", iters=40, crop=16))
    rounding(model)
    trained = [r for r in rounding.reports if r.layers]
    assert trained and all(r.loss_learned < r.loss_nearest for r in trained)


def test_weight_ranges_are_mse_clipped_under_learned_rounding_only(small_cnn, tmp_path):
    assert QuantConfig().weight_range_observer == "minmax"
    assert QuantConfig(rounding="brecq").weight_range_observer == "mse"
    assert QuantConfig(rounding="brecq", weight_observer="minmax").weight_range_observer \
        == "minmax"
    config = QuantConfig.from_preset("fast", weights="int4", rounding="brecq", iters=5)
    model, _, _, weights = calibrated(small_cnn, config, image_feeds(8))
    clipped = [name for name, params in weights.items() if params.axis == 0
               and np.any(params.scale.reshape(-1) * 7 < np.abs(
                   model.graph.initializers[name].const_value.numpy()).reshape(
                   params.scale.size, -1).max(axis=1) - 1e-6)]
    assert clipped  # some channel's range is below its largest weight


def test_fisher_projection_covariance_is_the_softmax_kl_hessian():
    from onnxq.refine.rounding.fisher import loss_projection

    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0]]).repeat(40000, 1)
    r = loss_projection(logits, torch.Generator().manual_seed(0))
    p = torch.softmax(logits[0], 0)
    expected = torch.diag(p) - torch.outer(p, p)
    np.testing.assert_allclose((r.T @ r / len(r)).numpy(), expected.numpy(), atol=6e-3)


def test_fisher_weights_follow_the_output_sensitivity():
    from onnxq.refine.rounding.fisher import output_sensitivity
    from onnxq.refine.rounding.sample_store import SampleStore

    # logits y = the first two channels of h = 3 x; h's last two channels never reach y
    model = ir.from_proto(onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4] x) => (float[N, 2] y)
        <float k = {3.0}, int64[1] starts = {0}, int64[1] ends = {2}, int64[1] axes = {1}> {
            h = Mul(x, k)
            y = Slice(h, starts, ends, axes)
        }
        """))
    x = torch.randn(4000, 4, generator=torch.Generator().manual_seed(0))
    store = SampleStore()
    plan = annotate(model, QuantConfig.from_preset("fast"))
    weights, means = output_sensitivity(model, plan, store.collect([{"x": x}]), ["h"], store,
                                        500, "cpu", 0)
    h = weights["h"].take(torch.arange(4000))
    assert torch.all(h[:, 2:] == 0)
    # E[g^2] = the softmax Hessian's diagonal p (1 - p), as dy/dh is the identity there
    p = torch.softmax(3 * x[:, :2], dim=1)
    assert float(h[:, 0].mean()) == pytest.approx(float((p[:, 0] * (1 - p[:, 0])).mean()),
                                                  rel=0.1)
    assert means["h"] == pytest.approx(float(h.mean()), rel=1e-5)


def test_fisher_weighted_block_reconstruction_beats_nearest(small_cnn, tmp_path):
    sqnr = {}
    for rounding, loss in (("nearest", "mse"), ("brecq", "fisher")):
        out = tmp_path / f"{rounding}.onnx"
        config = QuantConfig.from_preset("fast", weights="int4", rounding=rounding, loss=loss,
                                         iters=60)
        quantize(small_cnn, out, image_feeds(64), config, quiet=True)
        sqnr[rounding] = compare(load_model(small_cnn), load_model(out),
                                 image_feeds(64, seed=1)).outputs[0].sqnr_db
    assert sqnr["brecq"] > sqnr["nearest"] + 1.0


def _activation_scales(path) -> dict[str, float]:
    """The scale of every QuantizeLinear of an activation in a QDQ model."""
    model = load_model(path)
    initializers = model.graph.initializers
    return {node.inputs[0].name: float(initializers[node.inputs[1].name].const_value.numpy())
            for node in model.graph if node.op_type == "QuantizeLinear"
            and node.inputs[0].const_value is None}


def test_learned_activation_steps_reach_the_model_and_cut_the_w4a4_error(small_cnn, tmp_path):
    errors, scales = {}, {}
    for steps in (False, True):
        out = tmp_path / f"steps-{steps}.onnx"
        config = QuantConfig.from_preset("fast", weights="int4", activations="uint4",
                                         observer="minmax", rounding="brecq", iters=60,
                                         learn_steps=steps)
        assert config.learn_steps == steps
        quantize(small_cnn, out, image_feeds(64), config, quiet=True)
        result = compare(load_model(small_cnn), load_model(out), image_feeds(64, seed=1))
        errors[steps], scales[steps] = result.outputs[0].sqnr_db, _activation_scales(out)
    assert scales[True].keys() == scales[False].keys()
    moved = [name for name, scale in scales[True].items() if scale != scales[False][name]]
    # all but the max-pool's (which shares its input's grid) and the Add's (read by a
    # later block too)
    assert len(moved) == len(scales[True]) - 2, sorted(set(scales[True]) - set(moved))
    assert errors[True] > errors[False] + 0.5, errors


def test_4_bit_activations_default_to_learned_steps_and_mse_ranges():
    w4a4 = QuantConfig(weights="int4", activations="uint4", rounding="brecq")
    assert w4a4.learn_steps and w4a4.observer == "mse"
    w4a8 = QuantConfig(weights="int4", rounding="brecq")
    assert not w4a8.learn_steps and w4a8.observer == "minmax"
    assert not QuantConfig(weights="int4", activations="uint4").learn_steps  # nearest
    assert QuantConfig(weights="int4", activations="uint4", observer="minmax").observer \
        == "minmax"


def test_learned_steps_need_learned_rounding_and_quantized_activations():
    for fields in ({"rounding": "nearest"},
                   {"rounding": "gptq", "activations": "none", **PRESETS["fast"]}):
        with pytest.raises(OnnxqError, match="--learn-steps"):
            QuantConfig(weights="int4", learn_steps=True, **fields)
