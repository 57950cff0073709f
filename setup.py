"""regmix-ds: RegMix data-mixture search as a DeepSpeed plugin for HPC clusters."""
from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="regmix-ds",
    version="0.1.0",
    description="RegMix (data mixture as regression) on DeepSpeed, Slurm and MPI",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["regmix_ds", "regmix_ds.*"]),
    install_requires=[
        "numpy>=1.26",
        "torch>=2.4",
        "deepspeed>=0.16",
        "transformers>=5",
        "tokenizers>=0.20",
        "datasets>=3",
        "lightgbm>=4",
        "scipy>=1.10",
        "pyyaml>=6",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "mpi4py>=4",
    ],
    extras_require={
        "mpi": ["openmpi"],
        "test": ["pytest>=8", "pytest-timeout>=2", "pytest-xdist>=3", "ruff>=0.6", "openmpi"],
        "dev": ["pytest>=8", "pytest-timeout>=2", "pytest-xdist>=3", "ruff>=0.6", "openmpi"],
    },
    entry_points={"console_scripts": ["regmix-ds=regmix_ds.commands.main:main"]},
)
