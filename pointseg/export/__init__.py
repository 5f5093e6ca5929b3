"""Deployment without the training stack: ``pointseg-export`` writes a model folder
(safetensors, JSON, ONNX; ``export``), whose graph takes rulebooks computed in numpy
(``rulebooks``, ``onnx_graph``), and ``runtime`` loads it back for ``Segmenter.from_pretrained``."""
