"""What a model is and how it is transformed. Imports nothing from backends, engine or zoo."""

from graph.ir import Graph, Node, TensorType, Value

__all__ = ["Graph", "Node", "TensorType", "Value"]
