"""AnalyticBiasCorrectionPass on its own: from folded BatchNorm statistics alone it removes
most of the mean output shift that 4-bit weight rounding causes; without statistics it
changes nothing."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from onnxq.config import QuantConfig
from onnxq.emit.simulate import quantized_copy
from onnxq.io.model_io import load_model
from onnxq.models.torch_export import export_module
from onnxq.plan.annotate import annotate
from onnxq.plan.qparams import resolve_weights
from onnxq.prepare.stage import prepare
from onnxq.refine.bias_correction import AnalyticBiasCorrectionPass

CONFIG = QuantConfig(weights="int4", activations="none", refine_ranges=False,
                     bias_correction="analytic")


def _batches(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((8, 3, 12, 12)).astype(np.float32) for _ in range(count)]


def _bn_net(path):
    """Conv -> BatchNorm (statistics of the data below, shifted gamma/beta) -> ReLU -> Conv."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1),
                              torch.nn.BatchNorm2d(16, momentum=None), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 8, 3, padding=1))
    with torch.no_grad():
        net.train()
        for batch in _batches(4):
            net[:2](torch.from_numpy(batch))  # running statistics = the data's own
        net[1].weight.uniform_(0.5, 2.0)
        net[1].bias.uniform_(-0.5, 1.5)
    return export_module(net.eval(), torch.zeros(1, 3, 12, 12), path, "image", 17,
                         fold_constants=False)  # FuseBatchNormPass folds it, keeping the stats


def _mean_shift(model, fp32_path) -> float:
    """Norm of the per-channel mean output error against FP32 over the batches."""
    quantized = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    diff = [quantized.run(None, {"image": b})[0] - reference.run(None, {"image": b})[0]
            for b in _batches(4)]
    return float(np.linalg.norm(np.mean(diff, axis=(0, 1, 3, 4))))


def test_folded_statistics_remove_most_of_the_mean_shift(tmp_path):
    import onnx_ir as ir

    fp32 = _bn_net(tmp_path / "bn.onnx")
    model = load_model(fp32)
    prepare(model, CONFIG)
    plan = annotate(model, CONFIG)
    weights = resolve_weights(model, plan)
    before = _mean_shift(ir.to_proto(quantized_copy(model, plan, {}, weights)), fp32)
    biases = {name: model.graph.initializers[name].const_value.numpy().copy()
              for name in plan.biases}
    assert AnalyticBiasCorrectionPass(plan, weights)(model).modified
    changed = [name for name, bias in biases.items()
               if not np.array_equal(model.graph.initializers[name].const_value.numpy(), bias)]
    assert len(changed) == 1  # the second conv: its input has statistics, the first's none
    after = _mean_shift(ir.to_proto(quantized_copy(model, plan, {}, weights)), fp32)
    assert after < 0.5 * before, (before, after)


def test_without_batchnorm_statistics_nothing_changes(small_cnn):
    model = load_model(small_cnn)
    prepare(model, CONFIG)
    plan = annotate(model, CONFIG)
    assert plan.biases
    assert not AnalyticBiasCorrectionPass(plan, resolve_weights(model, plan))(model).modified
