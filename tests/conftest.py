"""Test configuration.

On the CPU (default) the suite forces the Triton interpreter, so every kernel runs here:
FASTGAN_BACKEND=interpret must be set before triton is imported, hence at the top.
On a GPU (benchmarks/gpu_check.sh sets FASTGAN_TEST_DEVICE=cuda) the same tests run the
compiled kernels on CUDA tensors, and tests marked ``gpu`` run too.
"""
import os
import zlib

TEST_DEVICE = os.environ.get("FASTGAN_TEST_DEVICE", "cpu")
if TEST_DEVICE == "cpu":
    os.environ.setdefault("FASTGAN_BACKEND", "interpret")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config):
    """On the CPU the suite proves the kernels in the Triton interpreter: stop with one clear line
    when this environment's interpreter cannot run them (instead of hundreds of failures deep
    inside it)."""
    if TEST_DEVICE == "cpu":
        from fastgan import backend

        problem = backend.interpreter_problem()
        if problem:
            pytest.exit(f"fastgan's CPU test suite runs the Triton kernels in the interpreter, but {problem}",
                        returncode=3)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available() and TEST_DEVICE == "cuda":
        return
    if not os.environ.get("FASTGAN_LONG_TESTS"):
        long = pytest.mark.skip(reason="minutes in the Triton interpreter: FASTGAN_LONG_TESTS=1 runs it (and "
                                       "benchmarks/gpu_check.sh on a GPU)")
        for item in items:
            if "long" in item.keywords:
                item.add_marker(long)
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (run by benchmarks/gpu_check.sh)")
    else:  # a GPU, but this run forces the Triton interpreter: captures and speed paths would fail
        skip = pytest.mark.skip(reason="GPU tests need FASTGAN_TEST_DEVICE=cuda (this run forces the Triton "
                                       "interpreter)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed(request):
    """Fresh but reproducible random inputs: each test is seeded from its own name."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def device():
    return TEST_DEVICE


@pytest.fixture
def one_thread():
    """Tiny models and small float64 matrices: one intra-op thread (OpenMP's spinning threads cost
    more than they give at these sizes, much more on a shared machine). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
