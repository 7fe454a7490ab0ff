"""Writes that cannot be redirected (issue 22): unique temporary files, no-replace commits that are
atomic with the rename, the umask honoured, nothing left behind on failure."""

from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest
import torch

import slimkit as sk
from slimkit.core.errors import SlimError
from slimkit.io import safetensors_file
from slimkit.io.layout import SlimWriter
from slimkit.io.safetensors_file import AtomicFile, atomic_write, check_writable, probe_folder


def names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_output_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.bin", [b"x"])
        os.umask(0o002)
        atomic_write(tmp_path / "b.bin", [b"x"])
    finally:
        os.umask(old)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o664


def test_no_replace_commit_refuses_a_file_that_appeared_meanwhile(tmp_path):
    path = tmp_path / "out.bin"
    with AtomicFile(path, overwrite=False) as f:
        f.write(b"mine")
        path.write_bytes(b"theirs")   # another writer finished first
        with pytest.raises(SlimError, match="already exists"):
            f.commit()
    assert path.read_bytes() == b"theirs"
    assert names(tmp_path) == ["out.bin"], "temporary file left behind"


def test_no_replace_never_follows_a_planted_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "out.bin").symlink_to(victim)
    with pytest.raises(SlimError, match="already exists"):
        atomic_write(tmp_path / "out.bin", [b"evil"], overwrite=False)
    atomic_write(tmp_path / "out.bin", [b"new"])   # replacing swaps the link itself, never writes through it
    assert victim.read_bytes() == b"precious" and not (tmp_path / "out.bin").is_symlink()


def test_without_hard_links_renameat2_keeps_the_no_replace_promise(tmp_path, monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(safetensors_file.os, "link", no_links)
    atomic_write(tmp_path / "a.bin", [b"1"], overwrite=False)
    with pytest.raises(SlimError, match="already exists"):
        atomic_write(tmp_path / "a.bin", [b"2"], overwrite=False)
    assert (tmp_path / "a.bin").read_bytes() == b"1" and names(tmp_path) == ["a.bin"]


def test_two_concurrent_saves_to_one_new_path_exactly_one_wins(tmp_path):
    path = tmp_path / "m.slim"
    models = [torch.nn.Sequential(torch.nn.Linear(600, 600)) for _ in range(2)]   # > the packed limit: SlimWriter
    start, results = threading.Barrier(2), []

    def save(model):
        start.wait()
        try:
            sk.save(model, path, overwrite=False)
            results.append("ok")
        except SlimError as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=save, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r == "ok" for r in results) == [False, True], results
    assert names(tmp_path) == ["m.slim"]
    sk.load(path, model=torch.nn.Sequential(torch.nn.Linear(600, 600)))


def test_slim_writer_failure_leaves_nothing(tmp_path):
    with pytest.raises(SlimError), SlimWriter(tmp_path / "x.slim") as w:
        w.add_array("a", np.zeros(4, np.float32))
        w.add("b", np.dtype("float32"), [4], [np.zeros(3, np.float32)])   # too short
    assert names(tmp_path) == []


def test_check_writable_refuses_folders_missing_folders_and_existing_files(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    for path, message in [(tmp_path, "is a folder"), (tmp_path / "no" / "x.slim", "does not exist"),
                          (tmp_path / "f", "already exists")]:
        with pytest.raises(SlimError, match=message):
            check_writable(path)
    check_writable(tmp_path / "f", overwrite=True)
    assert probe_folder(tmp_path) is None and names(tmp_path) == ["f"]


def test_read_only_folder_is_found_before_any_work(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(safetensors_file.tempfile, "mkstemp", read_only)
    with pytest.raises(SlimError, match="Read-only file system"):
        check_writable(tmp_path / "x.slim")
    with pytest.raises(SlimError, match="Read-only file system"):
        atomic_write(tmp_path / "x.slim", [b"x"])
