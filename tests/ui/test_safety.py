"""The UI's safety checks as plain functions: paths stay in the workspace, names cannot climb out of their
folder, uploads have a size limit, and only the loopback interface is served without --allow-remote."""

from __future__ import annotations

import os
import sys

import pytest

from voicetune.cli import main
from voicetune.ui.safety import (
    UiSafetyError,
    check_bind,
    check_upload_size,
    is_local_host,
    parse_auth,
    resolve_inside,
    safe_name,
    safe_upload_name,
)
from voicetune.ui.workspace import Workspace


@pytest.mark.parametrize(
    "typed", ["/etc", "/etc/passwd", "..", "../x", "datasets/../../x", "~/x", "a\x00b", ""]
)
def test_paths_outside_the_workspace_are_refused_with_the_reason(tmp_path, typed):
    ws = tmp_path / "ws"
    ws.mkdir()
    with pytest.raises(UiSafetyError) as e:
        resolve_inside(ws, typed)
    assert "workspace" in str(e.value) or "NUL" in str(e.value) or "no path" in str(e.value)


def test_paths_inside_resolve_and_owner_links_are_read_but_never_written_through(tmp_path):
    ws, elsewhere = tmp_path / "ws", tmp_path / "models" / "xtts"
    (ws / "datasets" / "a").mkdir(parents=True)
    elsewhere.mkdir(parents=True)
    (ws / "bases").mkdir()
    os.symlink(elsewhere, ws / "bases" / "xtts")  # the workspace's owner linked a model folder in
    assert resolve_inside(ws, "datasets/a", must_exist=True) == ws.resolve() / "datasets" / "a"
    assert resolve_inside(ws, str(ws / "datasets" / "a")) == ws.resolve() / "datasets" / "a"
    assert resolve_inside(ws, "datasets/./a/../a") == ws.resolve() / "datasets" / "a"
    assert resolve_inside(ws, "bases/xtts", must_exist=True).resolve() == elsewhere.resolve()
    with pytest.raises(UiSafetyError, match="outside the workspace"):
        resolve_inside(ws, "bases/xtts/out", for_writing=True)
    with pytest.raises(UiSafetyError, match="does not exist"):
        resolve_inside(ws, "datasets/missing", must_exist=True)


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "../x.wav",
        "a/b.wav",
        "..\\x.wav",
        "dir\\x.wav",
        "..",
        ".",
        ".hidden.wav",
        "..evil.wav",
        "x\n.wav",
        "",
        "   ",
    ],
)
def test_upload_names_that_name_a_folder_or_a_hidden_file_are_refused(name):
    with pytest.raises(UiSafetyError):
        safe_upload_name(name)


@pytest.mark.parametrize(("given", "stored"), [
    ("take 1.wav", "take 1.wav"), ("Take (2).WAV", "Take (2).wav"), ("voix_é.flac", "voix_é.flac"),
    ("a;rm -rf *.mp3", "a_rm -rf.mp3"), ("noext", "noext"), ("x.tar.gz", "x.tar.gz"), ("__.wav", "file.wav"),
])
def test_other_upload_names_are_kept_readable_with_odd_characters_replaced(given, stored):
    assert safe_upload_name(given) == stored


@pytest.mark.parametrize(
    "name", ["../escape", "a/b", "a b", "", ".hidden", "x..y", "-rf", "é" * 3, "a" * 200]
)
def test_dataset_run_and_package_names_are_refused_not_repaired(name):
    with pytest.raises(UiSafetyError):
        safe_name(name, "run name")


def test_good_names_pass_unchanged():
    assert safe_name("run-2024.01_b") == "run-2024.01_b"


def test_upload_size_limit_names_the_file_and_the_flag():
    check_upload_size(1024 * 1024, 1.0, "a.wav")
    with pytest.raises(
        UiSafetyError, match=r"big\.wav: 2\.0 MB is over the upload limit of 1 MB.*--max-upload-mb"
    ):
        check_upload_size(2 * 1024 * 1024, 1.0, "big.wav")


def test_saving_uploads_refuses_traversal_and_oversized_files_and_keeps_the_rest(tmp_path):
    ws = Workspace(tmp_path / "ws", max_upload_mb=1).ensure()
    good, big = tmp_path / "good.wav", tmp_path / "big.wav"
    good.write_bytes(b"RIFF" + b"\0" * 100)
    big.write_bytes(b"\0" * (1024 * 1024 + 1))
    saved = ws.save_uploads([("../../escape.wav", good), ("take.wav", good), ("big.wav", big),
                             ("take.wav", good)], "session")
    assert saved.saved == ["take.wav", "take.wav"]  # the same file twice is stored once
    assert set(saved.refused) == {"../../escape.wav", "big.wav"}
    assert "path traversal" in saved.refused["../../escape.wav"]
    assert sorted(p.name for p in (ws.root / "recordings" / "session").iterdir()) == ["take.wav"]
    assert not (tmp_path / "escape.wav").exists() and not (ws.root / "escape.wav").exists()
    other = tmp_path / "other.wav"
    other.write_bytes(b"RIFF" + b"\1" * 100)
    assert ws.save_uploads([("take.wav", other)], "session").saved == ["take_2.wav"]  # never overwritten
    with pytest.raises(UiSafetyError):
        ws.save_uploads([("take.wav", good)], "../outside")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_binds_need_no_flag(host):
    assert is_local_host(host) and check_bind(host, allow_remote=False) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.org"])
def test_other_interfaces_are_refused_without_allow_remote_and_warned_with_it(host):
    with pytest.raises(UiSafetyError, match="--allow-remote"):
        check_bind(host, allow_remote=False)
    assert "WARNING" in check_bind(host, allow_remote=True)


def test_the_cli_refuses_a_non_local_bind_before_starting_anything(tmp_path, caplog):
    code = main(["ui", "--workspace", str(tmp_path / "ws"), "--host", "0.0.0.0", "--port", "1"])
    assert code == 1
    assert "--allow-remote" in caplog.text
    assert not (tmp_path / "ws").exists()  # refused before the workspace or a server was made


def test_auth_is_user_colon_password():
    assert parse_auth(None) is None and parse_auth("") is None
    assert parse_auth("ann:s3:cret") == ("ann", "s3:cret")
    for bad in ("ann", ":x", "ann:"):
        with pytest.raises(UiSafetyError, match="USER:PASS"):
            parse_auth(bad)


def test_importing_voicetune_and_its_ui_package_does_not_import_gradio():
    import subprocess

    code = ("import sys, voicetune, voicetune.ui, voicetune.cli; voicetune.cli.build_parser(); "
            "print('gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
