"""Backend selection: automatic choice, forcing by environment and context manager,
clear errors for backends that cannot run, and the one-time fallback warning."""
import subprocess
import sys
import warnings

import pytest
import torch

import fastgan
from fastgan import backend


needs_interpreter = pytest.mark.skipif(
    not backend.triton_interprets(),
    reason="Triton was imported compiled (GPU run); interpreter mode is fixed at import")


@pytest.fixture
def auto(monkeypatch):
    monkeypatch.delenv("FASTGAN_BACKEND", raising=False)
    monkeypatch.setattr(backend, "_decided", {})  # decisions are cached per (forced, device)


def test_cpu_tensors_default_to_eager(auto):
    assert fastgan.backend_for(torch.ones(2)) == "eager"


@needs_interpreter
def test_env_forces_a_backend(monkeypatch):
    monkeypatch.setenv("FASTGAN_BACKEND", "eager")
    assert fastgan.backend_for(torch.ones(2)) == "eager"
    monkeypatch.setenv("FASTGAN_BACKEND", "interpret")
    assert fastgan.backend_for(torch.ones(2)) == "interpret"
    monkeypatch.setenv("FASTGAN_BACKEND", "Auto")
    assert fastgan.backend_for(torch.ones(2)) == "eager"


def test_unknown_backend_names_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="unknown backend"):
        with fastgan.use_backend("cudnn"):
            pass
    monkeypatch.setenv("FASTGAN_BACKEND", "fast")
    with pytest.raises(ValueError, match="FASTGAN_BACKEND"):
        fastgan.backend_for(torch.ones(1))


@needs_interpreter
def test_use_backend_nests_and_restores(auto):
    x = torch.ones(3)
    with fastgan.use_backend("interpret"):
        assert fastgan.backend_for(x) == "interpret"
        with fastgan.use_backend("eager"):
            assert fastgan.backend_for(x) == "eager"
        assert fastgan.backend_for(x) == "interpret"
    assert fastgan.backend_for(x) == "eager"


@needs_interpreter
def test_use_backend_overrides_env(monkeypatch):
    monkeypatch.setenv("FASTGAN_BACKEND", "eager")
    with fastgan.use_backend("interpret"):
        assert fastgan.backend_for(torch.ones(1)) == "interpret"


def test_forced_triton_on_cpu_tensor_is_a_clear_error(auto):
    with fastgan.use_backend("triton"):
        with pytest.raises(fastgan.BackendError, match="needs CUDA tensors"):
            fastgan.backend_for(torch.ones(1))


def test_mixed_devices_rejected(auto):
    with pytest.raises(ValueError, match="different device types"):
        fastgan.backend_for(torch.ones(1), torch.ones(1, device="meta"))


def test_cuda_without_triton_warns_once_and_falls_back(auto, monkeypatch):
    """Triton failing to import: automatic choice falls back to eager, warning once."""
    monkeypatch.setattr(backend, "_kernels", None)
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.setattr(backend, "_warned", set())
    with pytest.warns(RuntimeWarning, match="Triton is unavailable"):
        assert backend.backend_for_device("cuda") == "eager"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend.backend_for_device("cuda") == "eager"  # no second warning
    with fastgan.use_backend("triton"):
        with pytest.raises(fastgan.BackendError, match="Triton cannot be imported"):
            backend.backend_for_device("cuda")
    with fastgan.use_backend("interpret"):
        with pytest.raises(fastgan.BackendError, match="Triton cannot be imported"):
            backend.backend_for_device("cpu")


def test_interpret_requested_after_compiled_import_is_a_clear_error():
    code = ("import os, triton, torch\n"
            "os.environ['FASTGAN_BACKEND'] = 'interpret'\n"
            "os.environ.pop('TRITON_INTERPRET', None)\n"
            "import fastgan\n"
            "try:\n"
            "    fastgan.backend_for(torch.ones(1))\n"
            "except fastgan.BackendError as e:\n"
            "    print('BackendError:', e)\n")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("FASTGAN_BACKEND", "TRITON_INTERPRET")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "BackendError: backend 'interpret' was requested after Triton was imported" in r.stdout, r.stderr


def test_kernels_are_interpreted_in_this_suite():
    if fastgan.backend_for(torch.ones(1)) != "interpret":
        pytest.skip("suite not running under the interpreter")
    assert backend.triton_interprets()
    assert backend.kernels().is_interpreted()


def test_interpreter_incompatibility_is_named(monkeypatch):
    """Triton <= 3.6's interpreter cannot run the kernels with numpy >= 2.4 (int() of a
    one-element array): a forced 'interpret' says so instead of failing inside a kernel."""
    import numpy
    import triton

    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(numpy, "__version__", "2.4.6")
    monkeypatch.setattr(backend, "_decided", {})  # decisions are cached per (forced, device)
    problem = backend.interpreter_problem()
    assert problem and "triton 3.6.0" in problem and "numpy 2.4.6" in problem and "numpy<2.4" in problem
    if backend.triton_interprets():
        with fastgan.use_backend("interpret"):
            with pytest.raises(backend.BackendError, match="cannot run with numpy 2.4.6"):
                fastgan.backend_for(torch.ones(1))
    for tv, nv in (("3.7.0", "2.4.6"), ("3.6.0", "2.3.5"), ("3.9.0+git1234", "2.5.2"), ("3.5.1", "1.26.4")):
        monkeypatch.setattr(triton, "__version__", tv)
        monkeypatch.setattr(numpy, "__version__", nv)
        assert backend.interpreter_problem() is None, (tv, nv)
