"""Package layout: the top-level folders `kernels/` and `benchmarks/` install as
`fastgan.kernels` and `fastgan.benchmarks` (DESIGN.md section 1). Metadata lives in
pyproject.toml; this file only maps the folders, which works for both
`pip install .` and `pip install -e .`."""
from setuptools import setup

setup(
    packages=["fastgan", "fastgan.backend", "fastgan.functional", "fastgan.nn", "fastgan.compat", "fastgan.models",
              "fastgan.train", "fastgan.apps", "fastgan.kernels", "fastgan.benchmarks"],
    package_dir={
        "fastgan": "fastgan",
        "fastgan.kernels": "kernels",
        "fastgan.benchmarks": "benchmarks",
    },
    package_data={"fastgan.benchmarks": ["gpu_check.sh"], "fastgan.apps": ["feature_net.pt", "feature_net.json"]},
)
