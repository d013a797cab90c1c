"""Unix-socket listeners: safe reuse of a path left by a crash, then mode and owner."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager


def clear_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on; refuse to touch anything else.

    A crashed daemon leaves its socket file behind, and binding would fail with "address in use".
    A file that still accepts connections belongs to a running daemon and is left alone.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            os.unlink(path)
            return
    raise OSError(errno.EADDRINUSE, f"another process is listening on {path}")


@contextmanager
def private_umask() -> Iterator[None]:
    """Create files readable and writable by their owner only, for as long as the block runs."""
    previous = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(previous)


def set_permissions(path: str, mode: str, owner: str | None) -> None:
    """``mode`` in octal (``"0660"``); ``owner`` as ``user`` or ``user:group``."""
    os.chmod(path, int(mode, 8))
    if owner is None:
        return
    user, _, group = owner.partition(":")
    try:
        uid = pwd.getpwnam(user).pw_uid
        gid = grp.getgrnam(group).gr_gid if group else -1
    except KeyError as error:
        raise OSError(errno.EINVAL, f"unknown socket-owner {owner!r}") from error
    os.chown(path, uid, gid)


def remove_socket(path: str, inode: int) -> None:
    """Unlink our socket file on shutdown, unless another process has replaced it since."""
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass
