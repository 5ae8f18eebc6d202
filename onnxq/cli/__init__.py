"""The command line: ``onnxq quantize``, ``validate``, ``inspect`` and the default demo."""
