"""Compression passes over a model's weights and training graph (Han et al. 2015, 2016;
Frankle & Carbin 2019): magnitude pruning and its masks (``prune``, ``masks``), filter pruning
that rewrites the model to fewer channels (``structured``), lottery tickets (``lottery``),
k-means weight sharing (``kmeans``), Huffman coding (``huffman``) and the ``.cfz`` compressed
model file (``cfz``). These modules transform arrays and graphs only; the training they need
is passed in by the engine (``engine/compress.py``), as the layering of DESIGN.md requires.
"""
