"""Build ConvForge: four Python packages plus the Cython executor (engine/_runtime.pyx)."""

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

runtime = Extension(
    "engine._runtime",
    ["engine/_runtime.pyx"],
    include_dirs=[np.get_include()],
    extra_compile_args=["-O3"],
)

setup(
    name="convforge",
    version="0.1.0",
    description="A small static-graph compiler for convolutional neural networks",
    python_requires=">=3.11",
    packages=find_packages(include=["graph", "graph.*", "backends", "backends.*", "engine", "zoo"]),
    ext_modules=cythonize([runtime], language_level=3),
    install_requires=[
        "numpy>=2.0",
        "numba>=0.60",
        "scipy>=1.10",
        "threadpoolctl>=3.1",
        "scikit-learn>=1.3",
        "pillow>=10",
        "safetensors>=0.4",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6", "torch==2.13.0"],
        "gpu": ["cupy-cuda12x"],
        "gpu-cuda13": ["cupy-cuda13x"],
    },
    entry_points={"console_scripts": ["convforge = engine.cli:main"]},
)
