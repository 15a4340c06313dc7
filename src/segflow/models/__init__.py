"""Networks and the model bundle.

``factory`` builds segmentation_models_pytorch networks by name, ``weights`` loads local encoder
weights files (safetensors, or torch files read with ``weights_only=True``), and ``bundle`` saves
and loads the self-describing ``NAME.segflow/`` folder (``bundle.yaml`` + ``weights.safetensors``).
Import the submodules directly: this package imports nothing heavy.
"""
