"""`ray-align import-gguf`: bad input exits 2 with one error line before anything is loaded; output is atomic.

The real conversion (SmolLM2-135M-Instruct, ~30 s) is exercised by tests/integration/test_real_models.py.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

import pytest
from real_models import require_smollm2_gguf

from ray_align.cli import main
from ray_align.models import gguf
from ray_align.models.gguf import cached_import, import_gguf, packaged_gguf


@pytest.fixture
def fake_gguf(tmp_path) -> Path:
    """A file that passes the magic-bytes check (its body is never read when write_plain is replaced)."""
    path = tmp_path / "model.Q4_1.gguf"
    path.write_bytes(gguf.MAGIC + b"\0" * 60)
    return path


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: import-gguf:"), err
    return err[0]


def test_missing_file(tmp_path, capsys):
    assert main(["import-gguf", str(tmp_path / "absent.gguf"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_not_a_gguf(tmp_path, capsys):
    path = tmp_path / "model.gguf"
    path.write_text('{"model_type": "llama"}')
    assert main(["import-gguf", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "not a GGUF file" in error_line(capsys)


def test_a_folder_is_not_a_gguf(tmp_path, capsys):
    assert main(["import-gguf", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "not a file" in error_line(capsys)


def test_out_not_empty(fake_gguf, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    assert main(["import-gguf", str(fake_gguf), "--out", str(out)]) == 2
    assert "not an empty folder" in error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["config.json"]


def test_out_is_a_file(fake_gguf, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("x")
    assert main(["import-gguf", str(fake_gguf), "--out", str(out)]) == 2
    assert "not an empty folder" in error_line(capsys)


def test_gguf_package_missing(fake_gguf, tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a)
    )
    assert main(["import-gguf", str(fake_gguf), "--out", str(tmp_path / "out")]) == 2
    assert "pip install gguf" in error_line(capsys)


def test_bad_dtype_is_a_usage_error(fake_gguf, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["import-gguf", str(fake_gguf), "--dtype", "int4"])
    assert exit_.value.code == 2
    assert "invalid choice: 'int4'" in capsys.readouterr().err


@pytest.mark.parametrize("body", [b"\0" * 60, b"\3\0\0\0"], ids=["zeros", "truncated"])
def test_unreadable_body_is_a_user_error(fake_gguf, body, tmp_path, capsys):
    """Right magic bytes, no valid GGUF after them: transformers' error becomes one line."""
    importlib.import_module("gguf")  # in the cpu extra the project installs: missing, the test fails here
    fake_gguf.write_bytes(gguf.MAGIC + body)
    assert main(["import-gguf", str(fake_gguf), "--out", str(tmp_path / "out")]) == 2
    assert "cannot read" in error_line(capsys)
    assert not (tmp_path / "out").exists()


def fake_write(calls: list):
    def write_plain(path, folder, dtype):
        calls.append(path)
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"")

    return write_plain


def test_failure_leaves_nothing_behind(fake_gguf, tmp_path, monkeypatch):
    def broken(path, folder, dtype):
        (folder / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(gguf, "write_plain", broken)
    with pytest.raises(RuntimeError):
        import_gguf(fake_gguf, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [fake_gguf.name]  # no out, no temporary folder


def test_writes_into_an_empty_folder_and_keeps_the_umask(fake_gguf, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf, "write_plain", fake_write([]))
    out = tmp_path / "out"
    out.mkdir()
    old = os.umask(0o022)
    try:
        assert import_gguf(fake_gguf, out) == out
    finally:
        os.umask(old)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert out.stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0o700
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}


def test_default_out_is_the_file_name(fake_gguf, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gguf, "write_plain", fake_write([]))
    monkeypatch.chdir(tmp_path)
    assert main(["import-gguf", str(fake_gguf)]) == 0
    assert (tmp_path / "model.Q4_1" / "config.json").is_file()
    assert capsys.readouterr().out.startswith("model.Q4_1 (float32, ")


def test_cache_is_keyed_by_content(fake_gguf, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(gguf, "write_plain", fake_write(calls))
    first = cached_import(fake_gguf, root=tmp_path / "cache")
    assert cached_import(fake_gguf, root=tmp_path / "cache") == first and len(calls) == 1
    assert first.name == f"{gguf.gguf_sha256(fake_gguf)[:16]}-float32"
    fake_gguf.write_bytes(gguf.MAGIC + b"\1" * 60)  # another file content: another conversion
    assert cached_import(fake_gguf, root=tmp_path / "cache") != first and len(calls) == 2


def test_cache_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_ALIGN_CACHE", str(tmp_path / "a"))
    assert gguf.cache_root() == tmp_path / "a"
    monkeypatch.delenv("RAY_ALIGN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf.cache_root() == tmp_path / "xdg" / "ray-align"


def test_packaged_gguf():
    assert packaged_gguf("json") is None  # a package without a GGUF file
    assert packaged_gguf("no_such_package_here") is None
    # the wheel the project installs (scripts/env.sh): missing, the lookup fails and names the install
    assert require_smollm2_gguf() == packaged_gguf()
    assert packaged_gguf().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
