"""Layer kinds: one module per op family that carries a weight (``LayerKind``), gathered in
``LAYERS``; annotation, equalization, bias correction, range refinement and reconstruction
read a layer's facts from here."""

from __future__ import annotations

from onnxq.ops import conv, gather, gemm, matmul, recurrent
from onnxq.ops.kind import LayerKind

LAYERS: dict[str, LayerKind] = {**conv.KINDS, **gather.KINDS, **gemm.KINDS, **matmul.KINDS,
                                 **recurrent.KINDS}
