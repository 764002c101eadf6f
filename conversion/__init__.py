"""ONNX -> IR -> TFLite / Core ML / ONNX conversion with numeric verification (no TensorFlow)."""
from .ir import Graph, Node, QuantParams, Tensor

__all__ = ["Graph", "Node", "QuantParams", "Tensor"]
