"""Model exports written into the bundle folder, each verified against eager PyTorch.

``onnx.export_onnx`` writes ``model.onnx`` and ``torchscript.export_torchscript`` writes
``model.ts``; both check the file against the bundle's PyTorch network on seeded random inputs of
several sizes (``verify.check_parity``) before it is written, and list it under ``exports`` in
``bundle.yaml`` with its sha256 and the parity figures. ``segflow.infer.onnx_backend`` runs
``model.onnx`` without torch.
"""
