"""Seeing inside a model: loss landscapes, shift-invariance consistency, feature maps, training
curves, memory-plan pictures and one HTML report gathering them (``convforge landscape``,
``consistency``, ``features``, ``plot``, ``memory --plot``, ``report``: ``engine/cli_analysis.py``).

Pictures are drawn with matplotlib (the ``plot`` extra) on its Agg backend, in ``plots.py``; the
other modules compute numbers only, so they need no matplotlib and their results are tested
alone.
"""
