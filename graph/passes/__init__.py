"""Graph passes that change where and when values live, never what they hold:

- ``schedule``: a memory-aware topological order of the nodes;
- ``inplace``: which node outputs take over the buffer of an input that dies there;
- ``recompute``: drops chosen activations after the forward pass and recomputes them in the
  backward pass (Chen et al. 2016).

``engine.compiler`` runs them in the order recompute, schedule, in-place, then plans memory.
"""
