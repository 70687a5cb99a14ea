"""Where a call may write: the rules for every output path, in one place.

The pipeline (``output_path``), the command line (``--out``, ``--landmarks``), ``moda batch``
(``--out`` folder) and the Space (its request folders) all check their outputs here, before
any work, so a careless or hostile path fails in a second with one line — never after minutes
of rendering, never by destroying something that is not ours.

Rules for an output file (:func:`check_output_file`):

- the extension decides the format and must be one the output kind is written in
  (video: ``.mp4`` / ``.m4v``, H.264 + AAC in an MP4 container; landmarks: ``.npz``);
  anything else is refused (``.gif`` never silently receives MP4 data);
- never an input of the same call (the speech, the portrait), whatever its name;
- never a device node, FIFO or socket (``/dev/null`` stays a device, even for root);
- never a symbolic link into another folder (writing would replace the link, or — for tools
  that follow it — a file elsewhere); never a folder;
- an existing file is replaced only when it is of the same kind (an MP4 for a video, an
  ``.npz`` for landmarks) or ``overwrite=True`` (``--overwrite``); anything else is refused;
- the file name must fit the file system's limit (255 bytes on most) — the hidden temporary
  name used while writing (:func:`temporary_name`) is short, so any legal name works;
- the nearest existing folder must be writable (checked by creating and removing a probe file);
  missing folders are fine (they are created when the output is written).

The path returned is the normalised absolute path (``a/../b.mp4`` -> ``/cwd/b.mp4``): that is
what callers hand back to the user.

Several outputs of one call (a video and its landmarks) are checked together
(:func:`check_outputs`, which also refuses two outputs at one path) and written together with
:class:`StagedOutputs`: each is written to a temporary file next to its destination, and all
are moved into place only once every one of them is complete — or none is. Each move is a
rename inside the destination's own folder, so outputs on different file systems are undone
as well.

Between the check and the end of the work (minutes) another program may create or swap a file
at a destination: the final move (:func:`move_into_place`) replaces only what was there when
the work began — nothing, or the very same file — and otherwise leaves the newcomer untouched
and writes nothing.

Example:
    >>> from moda_hub.output_paths import check_output_file
    >>> check_output_file("outputs/../clip.mp4", "video", inputs=["speech.wav"])   # doctest: +SKIP
    '/home/me/clip.mp4'
"""
from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
import uuid
from typing import Dict, Iterable, List, Optional, Sequence

from moda_hub.errors import OutputPathError

#: Output kinds -> (extensions accepted, what the kind is called in messages, magic-byte sniffer).
VIDEO, LANDMARKS = "video", "landmarks"
EXTENSIONS: Dict[str, tuple] = {VIDEO: (".mp4", ".m4v"), LANDMARKS: (".npz",)}
_KIND_NAMES = {VIDEO: "an MP4 video", LANDMARKS: "a landmarks .npz"}
#: The hidden temporary name is at most this long (well under any file system's limit).
_TEMP_NAME_LEN = 40


def _is_mp4(head: bytes) -> bool:
    return len(head) >= 12 and head[4:8] == b"ftyp"


def _is_npz(head: bytes) -> bool:
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06")   # a zip (an empty one too)


_SNIFF = {VIDEO: _is_mp4, LANDMARKS: _is_npz}


def normalise(path) -> str:
    """``path`` as a normalised absolute path (``~`` expanded, ``..`` resolved lexically).

    Raises:
        OutputPathError: ``path`` is not a file path (None, a number, an empty string, NUL).
    """
    try:
        text = os.fspath(path)
    except TypeError:
        raise OutputPathError(f"output path {path!r} is not a file path — pass e.g. 'out.mp4'") from None
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text.strip() or "\x00" in text:
        raise OutputPathError(f"output path {text!r} is empty or holds a NUL character — pass e.g. 'out.mp4'")
    return os.path.normpath(os.path.abspath(os.path.expanduser(text)))


def _input_paths(inputs: Iterable) -> List[str]:
    """The file paths among a call's inputs (arrays, PIL images and text are not files)."""
    paths = []
    for item in inputs:
        if isinstance(item, (str, os.PathLike)):
            try:
                paths.append(normalise(item))
            except OutputPathError:
                continue
        elif isinstance(item, tuple):
            paths += _input_paths(item)
        else:
            name = getattr(item, "filename", None) or getattr(item, "name", None)   # PIL image / open file
            if isinstance(name, str) and name:
                paths.append(normalise(name))
    return paths


def _same_file(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _name_max(folder: str) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _nearest_folder(full: str) -> str:
    parent = os.path.dirname(full)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    return parent


def check_writable_folder(folder: str, shown: str) -> None:
    """Raise OutputPathError unless ``folder`` (an existing folder) can be written to, by
    permission (for root too: a folder without any write bit counts as read-only) and in fact
    (a probe file is created and removed, which catches read-only file systems)."""
    mode = os.stat(folder).st_mode
    if not os.access(folder, os.W_OK | os.X_OK) or not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
        raise OutputPathError(f"cannot write {shown}: the folder {folder!r} is read-only — choose a folder "
                              "you can write to")
    try:
        fd, probe = tempfile.mkstemp(prefix=".moda-write-check-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise OutputPathError(f"cannot write {shown} ({err.strerror}) — choose a folder you can write to") from None


def check_output_file(path, kind: str = VIDEO, *, inputs: Sequence = (), overwrite: bool = False) -> str:
    """Check, before any work, that output ``kind`` may be written at ``path``; return the
    normalised absolute path. Nothing is created (see the module docstring for the rules).

    Args:
        path: the destination file.
        kind (str): "video" or "landmarks".
        inputs: the call's inputs (paths, arrays, PIL images ...); an output at the path of one
            of them is refused.
        overwrite (bool, default False): replace an existing file of another kind.

    Raises:
        OutputPathError: with what is wrong and what to do.
    """
    full = normalise(path)
    what = _KIND_NAMES[kind]
    shown = f"the {kind} to {full!r}"
    extensions = EXTENSIONS[kind]
    for source in _input_paths(inputs):
        if _same_file(full, source):
            raise OutputPathError(f"cannot write {shown}: that is an input of this call and would be "
                                  "destroyed — choose another output path")
    name = os.path.basename(full)
    parent = _nearest_folder(full)
    limit = _name_max(parent if os.path.isdir(parent) else "/")
    if len(os.fsencode(name)) > limit:
        raise OutputPathError(f"cannot write {shown}: the file name is {len(os.fsencode(name))} bytes, more "
                              f"than the {limit} this file system allows — use a shorter name")
    try:
        st = os.lstat(full)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as err:
        raise OutputPathError(f"cannot write {shown} ({err.strerror}) — choose another output path") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            target = os.path.realpath(full)
            if os.path.dirname(target) != os.path.realpath(os.path.dirname(full)):
                raise OutputPathError(f"cannot write {shown}: it is a symbolic link into another folder "
                                      f"({target!r}) — choose a plain file path")
            try:
                st = os.stat(full)
            except OSError:
                st = None                      # a dangling link in the same folder: replaced
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise OutputPathError(f"cannot write {shown}: it is a folder — pass a file path such as "
                                  f"'outputs/moda{extensions[0]}'")
        if st is not None and not stat.S_ISREG(st.st_mode):
            node = ("a device node" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                    else "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a socket or special file")
            raise OutputPathError(f"cannot write {shown}: it is {node}, which is never replaced — choose a "
                                  "plain file path")
        if st is not None and not overwrite and not _holds(full, kind):
            raise OutputPathError(f"cannot write {shown}: a file that is not {what} is already there — "
                                  "choose another path, or pass --overwrite (overwrite=True) to replace it")
    ext = os.path.splitext(full)[1].lower()
    if ext not in extensions:
        raise OutputPathError(f"cannot write {shown}: the name ends in {ext or 'no extension'!r}, but {what} "
                              f"is written — use a path ending in {' or '.join(extensions)}")
    if not os.path.isdir(parent):
        raise OutputPathError(f"cannot write {shown}: {parent!r} is a file, not a folder — choose a folder "
                              "you can write to")
    check_writable_folder(parent, shown)
    return full


def _holds(path: str, kind: str) -> bool:
    """True when the regular file at ``path`` is of output ``kind`` (by its first bytes)."""
    try:
        with open(path, "rb") as f:
            return _SNIFF[kind](f.read(16))
    except OSError:
        return False


def check_outputs(outputs: Dict[str, Optional[object]], *, inputs: Sequence = (),
                  overwrite: bool = False) -> Dict[str, str]:
    """Check every output of one call: ``{kind: path or None}`` -> ``{kind: normalised path}``
    (None entries dropped). Also refuses two outputs at one path."""
    checked: Dict[str, str] = {}
    for kind, path in outputs.items():
        if path is None:
            continue
        full = check_output_file(path, kind, inputs=inputs, overwrite=overwrite)
        for other_kind, other in checked.items():
            if _same_file(full, other):
                raise OutputPathError(f"the {kind} and the {other_kind} would both be written to {full!r} — "
                                      "give each output its own path")
        checked[kind] = full
    return checked


def check_output_dir(path) -> str:
    """Check an output *folder* (``moda batch --out``): an existing folder, or one that can be
    created; return it normalised. Nothing is created.

    Raises:
        OutputPathError: it is a file, lies under a file, or cannot be written.
    """
    full = normalise(path)
    shown = f"into {full!r}"
    if os.path.lexists(full) and not os.path.isdir(full):
        raise OutputPathError(f"cannot write {shown}: it is a file, not a folder — pass a folder (it is "
                              "created when missing)")
    parent = full if os.path.isdir(full) else _nearest_folder(full)
    if not os.path.isdir(parent):
        raise OutputPathError(f"cannot write {shown}: {parent!r} is a file, not a folder — choose a folder "
                              "you can write to")
    check_writable_folder(parent, shown)
    return full


def make_parent_folders(path: str) -> List[str]:
    """Create the missing folders above ``path``; return those created, deepest first."""
    missing, d = [], os.path.dirname(path)
    while not os.path.exists(d):
        missing.append(d)
        d = os.path.dirname(d)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    except OSError as err:
        raise OutputPathError(f"cannot create the folder for {path!r} ({err.strerror}) — choose a folder "
                              "you can write to") from None
    return missing


def temporary_name(path: str, suffix: str = "") -> str:
    """A hidden name next to ``path`` to write into before it is moved into place: short
    (``.moda-<hash>-<random>.part``) so that a destination with a name at the file system's
    limit still has room, and unique per call."""
    digest = hashlib.sha1(os.fsencode(path)).hexdigest()[:10]
    name = f".moda-{digest}-{uuid.uuid4().hex[:8]}.part{suffix}"
    assert len(name) <= _TEMP_NAME_LEN
    return os.path.join(os.path.dirname(path), name)


def file_identity(path: str) -> Optional[tuple]:
    """(device, inode, status-change time in ns, size) of what is at ``path`` now (a link itself,
    not its target); None when nothing is. Taken before the work, it tells
    :func:`move_into_place` what may be replaced (the time tells a new file from an old one that
    got the deleted file's inode number, which file systems reuse at once)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns, st.st_size


def _changed(path: str, expected: Optional[tuple]) -> OutputPathError:
    how = "created" if expected is None else "replaced"
    return OutputPathError(f"{path!r} was {how} by another program while the output was being made — it was "
                           "left as it is and nothing was written; choose another output path")


def move_into_place(tmp: str, path: str, expected: Optional[tuple]) -> None:
    """Move the finished file ``tmp`` (in ``path``'s folder) to ``path`` only if ``path`` still
    holds what it held before the work: nothing (``expected`` None) or the very same file
    (``expected`` = its :func:`file_identity`). Where nothing was there, the move cannot replace
    a file made in the last instant either: a hard link (which fails when the name exists), then
    the temporary name removed; file systems without hard links get a plain rename.

    Raises:
        OutputPathError: something else is at ``path`` now (left untouched; ``tmp`` is kept
            for the caller to remove).
        OSError: the rename itself failed.
    """
    if file_identity(path) != expected:
        raise _changed(path, expected)
    if expected is None:
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise _changed(path, expected) from None
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise
        else:
            os.remove(tmp)
            return
    os.replace(tmp, path)


class StagedOutputs:
    """Write several outputs so that they appear together or not at all.

    ``stage(path)`` gives a temporary path next to ``path`` (its folders created) to write the
    output into; :meth:`commit` moves every staged file into place (after all of them were
    written), each only over what was at its destination when it was staged (see
    :func:`move_into_place`); leaving the ``with`` block by an exception removes every temporary
    file and the folders created for them.

    Example:
        >>> with StagedOutputs() as staged:                         # doctest: +SKIP
        ...     write_video(staged.stage("/o/clip.mp4", ".mp4"))
        ...     np.savez(staged.stage("/o/clip.npz", ".npz"), ...)
        ...     staged.commit()
    """

    def __init__(self):
        self._staged: List[tuple] = []
        self._made: List[str] = []
        self.committed = False

    def __enter__(self) -> "StagedOutputs":
        return self

    def stage(self, path: str, suffix: str = "") -> str:
        self._made += make_parent_folders(path)
        tmp = temporary_name(path, suffix)
        self._staged.append((tmp, path, file_identity(path)))
        return tmp

    def commit(self) -> None:
        """Move every staged file into place. Files already at the destinations are first moved
        aside (same folder, a rename), so when one move fails the others are undone and the old
        files restored: all outputs change, or none does."""
        for tmp, _, _ in self._staged:
            if not os.path.isfile(tmp):
                raise OutputPathError(f"the output {tmp!r} was not written — nothing was saved")
        done: List[tuple] = []          # (destination, our file's identity, its old file moved aside or None)
        try:
            for tmp, path, expected in self._staged:
                aside = None
                if expected is not None:
                    if file_identity(path) != expected:
                        raise _changed(path, expected)
                    aside = temporary_name(path, ".old")
                    os.rename(path, aside)
                    expected = None                   # the name is free now: taken only while still free
                done.append((path, file_identity(tmp)[:2], aside))      # device, inode: ours
                move_into_place(tmp, path, expected)
        except (OSError, OutputPathError) as err:
            for path, ours, aside in reversed(done):  # undo: our file goes, the old one comes back
                try:
                    if (file_identity(path) or ())[:2] == ours:
                        os.remove(path)
                    if aside is not None:
                        move_into_place(aside, path, None)      # never over a newcomer
                except (OSError, OutputPathError):
                    pass
            if isinstance(err, OutputPathError):
                raise err from None
            raise OutputPathError(f"cannot write {self._staged[len(done) - 1][1]!r} ({err.strerror}) — "
                                  "nothing was changed; choose another output path") from None
        for _, _, aside in done:
            if aside is not None:
                try:
                    os.remove(aside)
                except OSError:
                    pass
        self.committed = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.committed:
            return
        for tmp, _, _ in self._staged:
            try:
                os.remove(tmp)
            except OSError:
                pass
        for d in self._made:                       # deepest first; only when empty
            try:
                os.rmdir(d)
            except OSError:
                break


__all__ = ["EXTENSIONS", "LANDMARKS", "VIDEO", "StagedOutputs", "check_output_dir", "check_output_file",
           "check_outputs", "check_writable_folder", "file_identity", "make_parent_folders", "move_into_place",
           "normalise", "temporary_name"]
