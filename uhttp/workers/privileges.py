"""Who the service runs as: user, group and umask (Dispatcher options
`user`, `group`, `umask`, `allow_root`).

The dispatcher starts as root to bind a privileged port and open its log
and pid files, then calls `Privileges.drop()` before it starts any worker
or service, so every process of the service runs unprivileged. Names are
resolved before anything is bound, so a typo is a one-line error.

Must never drop privileges half way and go on: a failure of setgroups,
setgid or setuid is an error that stops the dispatcher (PrivilegeError).
"""

from __future__ import annotations

import grp
import importlib
import os
import pwd
from typing import cast

__all__ = ['ALLOW_ROOT_ENV', 'PrivilegeError', 'Privileges', 'parse_umask']

ALLOW_ROOT_ENV = 'UHTTP_WORKERS_ALLOW_ROOT'

# a user or a group: its name, or its id (an int or a string of digits)
NameOrId = str | int


class PrivilegeError(RuntimeError):
    """The user or group is unknown, or the process could not become it."""


def parse_umask(value: int | str) -> int:
    """An umask from an int (0o027) or an octal string ('027', '0o027')."""
    if isinstance(value, str):
        text = value.strip().lower()
        text = text[2:] if text.startswith('0o') else text
        try:
            value = int(text, 8)
        except ValueError:
            raise ValueError(f'umask={value!r}: not an octal number') from None
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 0 <= value <= 0o777:
        raise ValueError(f'umask={value!r}: use a number from 0 to 0o777')
    return value


# Modules imported lazily once workers start: imported while the interpreter
# is surely readable (it may sit in a directory the user cannot read).
_NEEDED_LATER = ('multiprocessing.connection', 'multiprocessing.popen_fork',
                 'multiprocessing.popen_spawn_posix',
                 'multiprocessing.reduction',
                 'multiprocessing.resource_tracker', 'subprocess')


def _import_before_drop() -> None:
    for name in _NEEDED_LATER:
        importlib.import_module(name)


def _is_id(value: NameOrId) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or \
        isinstance(value, str) and value.isdigit()


def _lookup_user(user: NameOrId) -> tuple[int, str | None, int | None]:
    """(uid, name, primary gid) of a user name or id."""
    try:
        entry = pwd.getpwuid(int(user)) if _is_id(user) \
            else pwd.getpwnam(cast(str, user))  # (not an id: a name)
    except KeyError:
        if _is_id(user):    # a bare id without a passwd entry is allowed
            return int(user), None, None
        raise PrivilegeError(f'unknown user {user!r}') from None
    return entry.pw_uid, entry.pw_name, entry.pw_gid


def _lookup_group(group: NameOrId) -> int:
    """The gid of a group name or id."""
    if _is_id(group):
        return int(group)
    try:
        return grp.getgrnam(cast(str, group)).gr_gid  # (a name)
    except KeyError:
        raise PrivilegeError(f'unknown group {group!r}') from None


class Privileges:
    """The user, group and umask the service should run with.

    `resolve()` looks the names up (PrivilegeError when unknown) and sets
    the umask; `drop()` changes the process's groups, group and user. With
    neither user nor group, both do nothing but the umask.
    """

    def __init__(self, user: NameOrId | None = None,
                 group: NameOrId | None = None,
                 umask: int | str | None = None,
                 allow_root: bool = False) -> None:
        self.user = user
        self.group = group
        self.umask = None if umask is None else parse_umask(umask)
        self.allow_root = allow_root
        self.uid: int | None = None
        self.gid: int | None = None
        self._name: str | None = None

    @property
    def wanted(self) -> bool:
        """True when a user or a group is to be taken."""
        return self.user is not None or self.group is not None

    def resolve(self) -> None:
        """Look the user and group up and apply the umask (call it before
        binding, so an unknown name stops the start at once)."""
        if self.umask is not None:
            os.umask(self.umask)
        primary: int | None = None
        if self.user is not None:
            self.uid, self._name, primary = _lookup_user(self.user)
        if self.group is not None:
            self.gid = _lookup_group(self.group)
        elif primary is not None:
            self.gid = primary
        elif self.uid is not None:
            self.gid = os.getgid()

    def root_warning(self) -> str | None:
        """The warning for running as root without `user=`, or None (not
        root, a user given, or root allowed on purpose)."""
        if os.geteuid() != 0 or self.user is not None or self.allow_root \
                or os.environ.get(ALLOW_ROOT_ENV) == '1':
            return None
        return ('running as root: give user= (and group=) to run the '
                'dispatcher and its workers unprivileged, or allow_root=True'
                f' ({ALLOW_ROOT_ENV}=1) to silence this')

    def give(self, path: str | os.PathLike[str] | None) -> None:
        """Make `path` (a log or pid file opened as root) belong to the user
        and group taken, so they can still reopen, rotate or remove it."""
        if not self.wanted or os.geteuid() != 0 or path is None:
            return
        os.chown(path, -1 if self.uid is None else self.uid,
                 -1 if self.gid is None else self.gid)

    def drop(self) -> None:
        """Become the resolved group and user: supplementary groups first
        (root's would otherwise stay), then the group, then the user (after
        which the rest would be refused). Does nothing when the process is
        already them (a new dispatcher started by SIGUSR2 inherits them)."""
        if not self.wanted or self._already():
            return
        _import_before_drop()
        try:
            if self.gid is not None:
                if self._name is not None and self.uid is not None:
                    os.initgroups(self._name, self.gid)
                else:
                    os.setgroups([self.gid])
                os.setgid(self.gid)
            if self.uid is not None:
                os.setuid(self.uid)
        except OSError as err:
            raise PrivilegeError(
                f'cannot run as {self.describe()}: '
                f'{err.strerror or err}') from None

    @staticmethod
    def unreadable_library() -> str | None:
        """The directory of Python's standard library when this process
        (after drop()) cannot read it, else None: every module imported
        from then on would fail."""
        library = os.path.dirname(os.__file__)
        return None if os.access(library, os.R_OK | os.X_OK) else library

    def _already(self) -> bool:
        uid_ok = self.uid is None or (os.getuid(), os.geteuid()) == (
            self.uid, self.uid)
        gid_ok = self.gid is None or (os.getgid(), os.getegid()) == (
            self.gid, self.gid)
        return uid_ok and gid_ok

    def describe(self) -> str:
        """'user nobody (65534), group nogroup (65534)', for messages."""
        parts = []
        if self.user is not None:
            parts.append(_named('user', self._name or self.user, self.uid))
        if self.gid is not None:
            name = self.group if self.group is not None \
                and not _is_id(self.group) else _group_name(self.gid)
            parts.append(_named('group', name, self.gid))
        return ', '.join(parts) or 'the current user'


def _group_name(gid: int) -> NameOrId:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return gid


def _named(kind: str, name: NameOrId, number: int | None) -> str:
    """'user nobody (65534)'; the number alone when it is the name."""
    if number is None or str(name) == str(number):
        return f'{kind} {name}'
    return f'{kind} {name} ({number})'
