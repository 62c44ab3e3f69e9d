"""The state directory and secret files are private: created 0700 / 0600, never through a symlink,
never someone else's, and an unsafe state directory is one line and exit code 3 at the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from virtproof.core.errors import EXIT_LAB, LabUnavailable
from virtproof.core.secretfile import write_secret
from virtproof.core.statedir import StateDirError, ensure_private_dir, state_root

NOBODY = 65534


def _mode(path: Path) -> int:
    return os.lstat(path).st_mode & 0o7777


# --- the state directory -------------------------------------------------------------------


def test_a_new_state_directory_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIRTPROOF_STATE", str(tmp_path / "deep" / "state"))
    root = state_root()
    assert root == tmp_path / "deep" / "state"
    assert _mode(root) == 0o700 and os.lstat(root).st_uid == os.geteuid()
    assert state_root() == root  # a second use only checks


def test_a_symlink_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "state"
    link.symlink_to(real)
    with pytest.raises(StateDirError, match="not a directory"):
        ensure_private_dir(link)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(StateDirError, match="not a directory"):
        ensure_private_dir(dangling)
    assert not (tmp_path / "nowhere").exists()


def test_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_text("")
    with pytest.raises(StateDirError, match="state"):
        ensure_private_dir(path)


def test_another_users_directory_is_refused(tmp_path: Path, root: None) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(StateDirError, match=f"owned by uid {NOBODY}, not by this user"):
        ensure_private_dir(theirs)


def test_a_directory_only_others_can_read_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.mkdir()
    path.chmod(0o755)
    assert ensure_private_dir(path) == path
    assert _mode(path) == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702, 0o1777])
def test_a_directory_others_can_write_to_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "state"
    path.mkdir()
    path.chmod(mode)
    with pytest.raises(StateDirError, match="writable by group or others"):
        ensure_private_dir(path)
    assert _mode(path) == mode  # left as it was, for the user to look at


def test_the_error_is_a_host_problem() -> None:
    error = StateDirError("state directory /x: owned by uid 1")
    assert isinstance(error, LabUnavailable) and error.exit_code == EXIT_LAB
    assert isinstance(error, RuntimeError)  # what the code bringing labs up catches


# --- the /tmp fallback, as a user without XDG_RUNTIME_DIR ------------------------------------

UID = 61730  # a uid no account uses, so /tmp/virtproof-<uid> is this test's alone

# Imports as root, then becomes UID (no account, so no files of its own to read) and asks.
AS_USER = f"""
import os
from virtproof.core.statedir import StateDirError, default_state_root, state_root
os.setgroups([])
os.setgid({UID})
os.setuid({UID})
assert default_state_root() == __import__("pathlib").Path("/tmp/virtproof-{UID}"), default_state_root()
try:
    print("ok", state_root())
except StateDirError as exc:
    print("refused", exc)
"""


@pytest.fixture
def fallback(root: None) -> Iterator[Path]:
    path = Path(f"/tmp/virtproof-{UID}")

    def remove() -> None:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)

    remove()
    yield path
    remove()


def _as_user() -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTPROOF_STATE", "XDG_RUNTIME_DIR")}
    proc = subprocess.run([sys.executable, "-c", AS_USER], capture_output=True, text=True, timeout=60, env=env,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip()


def test_the_tmp_fallback_is_made_private(fallback: Path) -> None:
    assert _as_user() == f"ok {fallback}"
    info = os.lstat(fallback)
    assert info.st_uid == UID and info.st_mode & 0o7777 == 0o700


def test_the_tmp_fallback_made_by_someone_else_is_refused(fallback: Path) -> None:
    fallback.mkdir(mode=0o700)  # made first by another user (root here)
    assert _as_user() == f"refused state directory {fallback}: owned by uid 0, not by this user ({UID})"


def test_the_tmp_fallback_as_a_symlink_is_refused(fallback: Path, tmp_path: Path) -> None:
    target = tmp_path / "theirs"
    target.mkdir(mode=0o700)
    os.chown(target, UID, UID)  # even a directory the user owns: the link itself is refused
    fallback.symlink_to(target)
    assert _as_user().startswith(f"refused state directory {fallback}: not a directory")


# --- the CLI -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["symlink", "writable by others"])
def test_an_unsafe_state_directory_is_one_line_and_exit_3(
    kind: str, tmp_path: Path, virtproof_cmd: list[str], project_root: Path
) -> None:
    state = tmp_path / "state"
    if kind == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        state.symlink_to(tmp_path / "elsewhere")
    else:
        state.mkdir()
        state.chmod(0o777)
    proc = subprocess.run(
        [*virtproof_cmd, "lab", "status", str(project_root / "scenarios" / "quickstart.yaml")],
        capture_output=True, text=True, timeout=120, check=False, env={**os.environ, "VIRTPROOF_STATE": str(state)},
    )  # fmt: skip
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == EXIT_LAB, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith(f"virtproof: lab unavailable: state directory {state}:"), lines


# --- secret files --------------------------------------------------------------------------


def test_a_secret_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = write_secret(tmp_path / "keys" / "id_ed25519", b"secret")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"secret"
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700


def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        write_secret(path, b"secret")
    assert path.read_bytes() == b"someone else's"


def test_a_symlink_is_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"theirs")
    link = tmp_path / "token"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        write_secret(link, b"secret")
    assert target.read_bytes() == b"theirs"
    dangling = tmp_path / "key"
    dangling.symlink_to(tmp_path / "planted")
    with pytest.raises(FileExistsError):
        write_secret(dangling, b"secret")
    assert not (tmp_path / "planted").exists()


def test_replace_removes_a_planted_symlink_instead_of_following_it(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"theirs")
    link = tmp_path / "token"
    link.symlink_to(target)
    write_secret(link, b"secret", replace=True)
    assert not link.is_symlink() and link.read_bytes() == b"secret" and _mode(link) == 0o600
    assert target.read_bytes() == b"theirs"
