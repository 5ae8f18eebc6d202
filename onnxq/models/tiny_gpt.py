"""A small GPT-2 decoder (``transformers``) trained here on Python's own docstrings: a
byte-level language model with trained weights, for block-wise 4-bit weight benchmarks.

No PyPI wheel ships trained GPT weights small enough to run here, so the model is trained
on local text: the docstrings of the standard library's modules, read with ``ast``, split by
module into training text and held-out text (every tenth module).  Bytes are the tokens
(vocabulary 256).  Training is seeded; the trained weights are cached beside the export.

    from onnxq.models import tiny_gpt
    path = tiny_gpt.export("/tmp/gpt/gpt.onnx")        # trains on first use (minutes)
    ids = tiny_gpt.held_out_windows(16)                # int64 [16, SEQ]
"""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

import numpy as np

LAYERS, HIDDEN, HEADS, SEQ, VOCAB = 2, 256, 4, 128, 256
INPUT_NAME = "input_ids"
STEPS, BATCH, LEARNING_RATE = 500, 16, 2e-3


def docstrings(held_out: bool) -> bytes:
    """The standard library's docstrings (modules, classes, functions), one module after
    another: every tenth module when ``held_out``, the others otherwise."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if not p.name.startswith("_"))
    chunks = []
    for k, path in enumerate(files):
        if (k % 10 == 0) != held_out:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef |
                          ast.AsyncFunctionDef) and (doc := ast.get_docstring(node)):
                chunks.append(doc.encode("ascii", "replace") + b"\n\n")
    return b"".join(chunks)


def windows(text: bytes, count: int, seed: int) -> np.ndarray:
    """``count`` seeded windows of SEQ bytes of ``text`` as int64 token ids."""
    data = np.frombuffer(text, np.uint8)
    starts = np.random.default_rng(seed).integers(0, len(data) - SEQ, count)
    return np.stack([data[s:s + SEQ] for s in starts]).astype(np.int64)


def held_out_windows(count: int, seed: int = 0) -> np.ndarray:
    """Windows of the held-out docstrings (modules the model was not trained on)."""
    return windows(docstrings(held_out=True), count, seed)


def _config():
    from transformers import GPT2Config

    return GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=HIDDEN, n_layer=LAYERS,
                      n_head=HEADS, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      use_cache=False, bos_token_id=0, eos_token_id=0)


def train(seed: int = 0, steps: int = STEPS, log=print):
    """A GPT-2 of the sizes above trained on the training docstrings (AdamW, cosine decay)."""
    import torch
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    net = GPT2LMHeadModel(_config())
    net.config._attn_implementation = "eager"  # plain MatMul/Softmax in the export
    text = docstrings(held_out=False)
    optimizer = torch.optim.AdamW(net.parameters(), lr=LEARNING_RATE, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, LEARNING_RATE, total_steps=steps,
                                                   pct_start=0.05)
    net.train()
    for step in range(steps):
        ids = torch.from_numpy(windows(text, BATCH, seed * 100_003 + step))
        loss = net(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"step {step}: loss {loss.item():.3f}")
    return net.eval()


def export(path: str | Path, seed: int = 0, steps: int = STEPS, log=print) -> Path:
    """Train (or reuse the weights cached at ``PATH.pt``) and export to ONNX (opset 17):
    ``input_ids`` int64 [batch, tokens] -> ``logits`` float32 [batch, tokens, 256]."""
    import torch
    from transformers import GPT2LMHeadModel

    path = Path(path)
    cache = path.with_suffix(".pt")
    if cache.exists():
        net = GPT2LMHeadModel(_config())
        net.config._attn_implementation = "eager"
        net.load_state_dict(torch.load(cache, weights_only=True))
        net.eval()
    else:
        net = train(seed, steps, log)
        torch.save(net.state_dict(), cache)

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, ids):  # with a mask: the packed-sequence test has no ONNX op
            return self.net(input_ids=ids, attention_mask=torch.ones_like(ids)).logits

    ids = torch.from_numpy(held_out_windows(1))
    torch.onnx.export(Logits().eval(), (ids,), str(path), input_names=[INPUT_NAME],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={INPUT_NAME: {0: "batch", 1: "tokens"},
                                    "logits": {0: "batch", 1: "tokens"}})
    return path
