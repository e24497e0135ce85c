"""version, compiled_isa, peak, and the build itself."""

import pathlib
import re
import subprocess
import sys

import pytest

import attnlab


def test_version_is_the_workspace_version():
    assert attnlab.__version__ == attnlab.version()
    root = pathlib.Path(__file__).resolve().parents[3] / "Cargo.toml"
    if not root.exists():
        pytest.skip("not run from a clone of attnlab")
    m = re.search(r'\[workspace\.package\][^\[]*?version = "([^"]+)"', root.read_text())
    assert m and attnlab.version() == m.group(1)


def test_built_for_this_cpu():
    isa = attnlab.compiled_isa()
    assert isa == "baseline" or set(isa.split()) <= {"sse4.2", "avx2", "fma", "avx512f"}
    # The module was built with -C target-cpu=native (.cargo/config.toml),
    # so it leaves none of this CPU's vector units unused.
    assert attnlab._attnlab.isa_warning() is None


def test_peak():
    p = attnlab.peak(quick=True, threads=1)
    assert p["threads_all"] == 1
    for key in ("fma_gflops_1t", "fma_gflops_all", "read_gbs_1t", "read_gbs_all"):
        assert p[key] > 0, key
    assert "f32" in p["fma_method"] and "array" in p["read_method"]


def test_import_without_torch_says_so():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "try:\n"
        "    import attnlab.torch\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "attnlab.torch needs PyTorch, which is not installed" in r.stdout, r.stdout + r.stderr
    # attnlab itself does not need torch.
    r = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['torch'] = None; import attnlab; print(attnlab.version())"],
        capture_output=True, text=True, check=True,
    )
    assert r.stdout.strip()


def test_stubs_match_the_module(tmp_path):
    """attnlab/__init__.pyi against the module as built (mypy's stubtest:
    every name, parameter and default)."""
    pytest.importorskip("mypy", reason="mypy is not installed")
    cfg = tmp_path / "mypy.ini"
    cfg.write_text("[mypy]\nignore_missing_imports = True\n")
    allow = tmp_path / "allow.txt"
    allow.write_text("attnlab.torch\n")  # pure Python, typed inline; may lack torch
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "attnlab", "--mypy-config-file", str(cfg),
         "--allowlist", str(allow), "--ignore-unused-allowlist"],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
