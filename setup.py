"""Build ConvForge: four Python packages plus the Cython executor (backends/cpu/_runtime.pyx)."""

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, find_packages, setup

runtime = Extension(
    "backends.cpu._runtime",
    ["backends/cpu/_runtime.pyx"],
    include_dirs=[np.get_include()],
    extra_compile_args=["-O3"],
)

setup(
    name="convforge",
    version="0.1.0",
    description="A small static-graph compiler for convolutional neural networks",
    python_requires=">=3.11",
    packages=find_packages(
        include=["graph", "graph.*", "backends", "backends.*", "engine", "engine.*", "zoo"]
    ),
    py_modules=["convforge"],  # the one import name for embedding programs
    # the GPU backend's CUDA C sources: it reads them beside its modules at run time (CuPy, or
    # the CPU emulation); MANIFEST.in puts them and the Cython source in the sdist
    package_data={"backends.gpu": ["kernels/*.cu", "kernels/*.cuh", "emulation/*.h"]},
    ext_modules=cythonize([runtime], language_level=3),
    install_requires=[
        "numpy>=2.0",
        # the tested minor release: backends/cpu uses Numba-private threading and caching hooks;
        # backends/cpu/numba_setup.py checks the same range at import (a test keeps them equal)
        "numba>=0.68,<0.69",
        "scipy>=1.10",
        # the kernels' GEMM (backends/cpu/blas.py): oneMKL runs ResNet's conv GEMMs 1.1-1.85x
        # faster than SciPy's OpenBLAS on AVX-512; elsewhere SciPy's OpenBLAS serves
        "mkl>=2024; platform_machine == 'x86_64' and sys_platform == 'linux'",
        "threadpoolctl>=3.1",
        "scikit-learn>=1.3",
        "pillow>=10",
        "safetensors>=0.4",
        "tqdm>=4.60",
    ],
    extras_require={
        # tests/engine/test_onnx_io.py: ONNX Runtime is the export oracle; torch.onnx.export's
        # default (torch.export) exporter, which the import tests use, needs onnxscript
        "test": [
            "pytest>=8",
            "hypothesis>=6",
            "torch==2.13.0",
            "build>=1.0",
            "onnx>=1.16",
            "onnxruntime>=1.18",
            "onnxscript>=0.7",
            "matplotlib>=3.7",  # tests/analysis: every picture is drawn and checked
            "mpi4py>=4.1",  # tests/distributed (with Debian's openmpi-bin)
        ],
        "onnx": ["onnx>=1.16"],  # engine.export_onnx / engine.import_onnx, convforge export
        # engine/analysis: landscape, consistency, features, plot, memory --plot, report
        "plot": ["matplotlib>=3.7"],
        # engine.distributed: mpirun -n N convforge train (needs an MPI: Open MPI or MPICH)
        "mpi": ["mpi4py>=4.1"],
        "gpu": ["cupy-cuda12x"],
        "gpu-cuda13": ["cupy-cuda13x"],
        # bench/inference.py: torch.onnx.export's default (torch.export) exporter needs onnxscript
        "bench": ["onnx>=1.16", "onnxruntime>=1.18", "onnxscript>=0.7"],
    },
    entry_points={"console_scripts": ["convforge = engine.cli:main"]},
)
