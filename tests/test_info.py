"""``fastgan info``: what a bug report needs, and a probe that imports the right package (issue 18,
item 9)."""
import json
import re
import subprocess

import numpy
import PIL
import pytest

import fastgan
from fastgan import backend, cli


def test_the_interpreter_probe_ignores_packages_in_the_working_folder(tmp_path, monkeypatch):
    """Run from a folder holding another ``fastgan/`` and a broken ``triton/``, the probe still checks
    the fastgan that runs (it used to import the folder's one: "no (AttributeError ...)")."""
    if backend.interpreter_problem() is not None:
        pytest.skip(f"this environment's interpreter cannot run the kernels: {backend.interpreter_problem()}")
    (tmp_path / "fastgan").mkdir()
    (tmp_path / "fastgan" / "__init__.py").write_text("__version__ = 'someone else'\n")
    (tmp_path / "triton").mkdir()
    (tmp_path / "triton" / "__init__.py").write_text("raise AttributeError('not the real triton')\n")
    monkeypatch.chdir(tmp_path)
    assert cli._interpreter_works().startswith("yes"), cli._interpreter_works()


def test_info_json_has_what_a_bug_report_needs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTGAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert cli.main(["info", "--json", "--no-probe"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["numpy"] == numpy.__version__ and info["Pillow"] == PIL.__version__
    assert info["os"] and info["cpu"] and info["fastgan path"] == fastgan.__path__[0]
    top = subprocess.run(["git", "-C", fastgan.__path__[0], "rev-parse", "--show-toplevel"], capture_output=True,
                         text=True).stdout.strip()
    if top:  # this checkout: its commit
        assert re.match(r"[0-9a-f]{40}", info["fastgan commit"]), info["fastgan commit"]
    assert info["environment"]["FASTGAN_CACHE_DIR"] == str(tmp_path / "cache")
    assert info["environment"]["CUDA_VISIBLE_DEVICES"] == "" and "TRITON_INTERPRET" not in info["environment"]
    assert info["conv dispatch cache"].startswith(str(tmp_path / "cache")) and "not written yet" in info[
        "conv dispatch cache"]
    assert info["triton interpreter works"] == "not checked"
    assert cli.main(["info", "--no-probe"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^environment\s+.*FASTGAN_CACHE_DIR=", text, re.M) and re.search(r"^Pillow\s+\d", text, re.M)
    assert re.search(r"^fastgan commit\s+", text, re.M)
