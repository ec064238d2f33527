"""Firmware builds: one profile's .config, make, and the artifact it produces.

Every profile builds in its own folder, ``<build root>/<profile>/``::

    config          the resolved .config (KCONFIG_CONFIG for make)
    out/            make's OUT= folder: kept between builds, so rebuilds are
                    incremental instead of ``make clean`` every time
    kconfig-out/    scratch OUT for ``make olddefconfig``
    build.log       the log of the latest build, good or bad
    artifacts/<id>/ the kept good builds (see artifacts.py)

The checkout's own ``.config`` and ``out/`` are never touched.  A build is
skipped when neither the checkout (``git describe`` plus a fingerprint of
uncommitted changes) nor the rendered config changed since the profile's
last good build, and that build's files still match their record.  make runs at a
lower CPU priority (nice) so that a print
in progress keeps its host CPU.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import errno
import hashlib
import os
import select
import shutil
import threading
import time
from typing import (TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Mapping, Optional,
                    Sequence, Tuple, TypeVar, Union)

from .artifacts import Artifact, ArtifactStore, file_sha256, read_data_dictionary_file
from .errors import (BuildError, NotFoundError, OctoflashError, UnavailableError,
                     ValidationError)
from .events import Progress, ProgressCallback, null_progress
from .kconfig import (SymbolInfo, check_against_kconfig, config_int, config_value,
                      parse_config, read_symbol_table, render_config, resolve_config)
from .settings import check_make_path

if TYPE_CHECKING:
    from .machine import Machine
    from .settings import Settings
from .tools import ToolTimeout, find_program, run_tool

# Within one ``build_many``: each checkout's ``source_version``, read once (path -> read).
_SOURCE_READS: contextvars.ContextVar[Optional[Dict[str, asyncio.Future]]] = \
    contextvars.ContextVar("octoflash_source_reads", default=None)

# Debian's packages for each cross compiler a build may need.
CROSS_PACKAGES = {
    "arm-none-eabi-gcc": "gcc-arm-none-eabi binutils-arm-none-eabi libnewlib-arm-none-eabi",
    "avr-gcc": "gcc-avr binutils-avr avr-libc",
}
TARGETS = {
    # target: (display name, option naming its checkout, command line flag, clone URL)
    "klipper": ("Klipper", "klipper_path", "--klipper-path",
                "https://github.com/Klipper3d/klipper"),
    "katapult": ("Katapult", "katapult_path", "--katapult-path",
                 "https://github.com/Arksine/katapult"),
}
OLDDEFCONFIG_TIMEOUT = 120.0
GIT_TIMEOUT = 30.0
LOG_TAIL_LINES = 20


@dataclasses.dataclass
class SourceVersion:
    describe: str        # git describe --always --tags --long --dirty, or "?" without git
    dirty: bool          # uncommitted changes to tracked files
    fingerprint: str     # "" for a clean tree; else a hash of the changed and new files


_T = TypeVar("_T")


@dataclasses.dataclass
class BuildResult:
    artifact: Artifact
    skipped: bool        # True: nothing changed since this artifact was built
    log_path: str        # the whole build log


class _BuildLog:
    """The build's output lines, turned into progress events as they arrive."""

    def __init__(self, emit: ProgressCallback, expected_lines: Optional[int]) -> None:
        self.emit = emit
        self.expected = expected_lines
        self.lines: List[str] = []
        self.make_lines = 0
        self.stage = "configure"

    def header(self, text: str) -> None:
        self.lines.append(text)

    def configure_line(self, _stream: str, line: str) -> None:
        self.lines.append(line)
        self.emit(Progress("configure", line, None, kind="output"))

    def make_line(self, _stream: str, line: str) -> None:
        self.lines.append(line)
        self.make_lines += 1
        text = line.strip()
        # Stages only move forward: Katapult compiles its deployer after linking
        # katapult.bin, which is still the link phase of the whole build.
        if self.stage != "link" and (text.startswith("Linking ") or text.startswith(
                ("Creating bin file", "Creating hex file", "Creating legacy binary"))):
            self.stage = "link"
            self.emit(Progress("link", text, self.percent(), kind="step"))
        self.emit(Progress(self.stage, line, self.percent(), kind="output"))

    def percent(self) -> Optional[float]:
        if not self.expected:
            return None
        return round(min(99.0, 100.0 * self.make_lines / self.expected), 1)

    def tail(self, count: int = LOG_TAIL_LINES) -> List[str]:
        return self.lines[-count:]


@dataclasses.dataclass
class _Pending:
    """A profile configured and ready for make."""
    profile: Any
    name: str
    target: str
    mcu: str
    source_dir: str
    version: SourceVersion
    rendered_sha: str
    resolved: Dict[str, str]
    resolved_mcu: str
    config_path: str
    out_dir: str
    log_path: str
    log: _BuildLog
    emit: ProgressCallback


class _Jobserver:
    """A GNU make jobserver of our own, shared by several makes.

    A pipe holding one token per job slot; every make gets
    ``--jobserver-auth=R,W`` in ``MAKEFLAGS`` (and no ``-j`` of its own),
    takes a token for each job beyond its first and gives it back after.  A
    make's first job needs a token too (make counts it as free), so this
    process takes one before starting each make and gives it back when that
    make ends: never more than ``jobs`` jobs run at a time, across all the
    makes.  The wait for a token runs in a thread.
    """

    def __init__(self, jobs: int, builds: int) -> None:
        self.jobs = max(1, jobs)
        self.builds = builds
        self._read, self._write = os.pipe()
        os.write(self._write, b"+" * self.jobs)
        self.fds = (self._read, self._write)
        self.makeflags = f" -j{self.jobs} --jobserver-auth={self._read},{self._write}"
        self._closed = False
        self._waiting = 0
        self._mutex = threading.Lock()

    async def acquire(self) -> bytes:
        with self._mutex:
            self._waiting += 1
        return await asyncio.to_thread(self._take)

    def _take(self) -> bytes:
        try:
            while True:
                # make sets the pipe non-blocking (O_NONBLOCK belongs to the pipe,
                # shared with us): wait until a token is there, and read it if no
                # make took it first.
                select.select([self._read], [], [])
                try:
                    return os.read(self._read, 1)
                except BlockingIOError:
                    continue
        finally:
            with self._mutex:
                self._waiting -= 1
                if self._closed and self._waiting == 0:
                    os.close(self._read)

    def release(self, token: bytes) -> None:
        with self._mutex:
            if not self._closed:
                os.write(self._write, token or b"+")

    def __enter__(self) -> _Jobserver:
        return self

    def __exit__(self, *exc: object) -> None:
        # A thread still waiting for a token (a cancelled build) gets one and
        # closes the read end after it; the fd is never closed under a reader.
        with self._mutex:
            self._closed = True
            os.write(self._write, b"+" * (self._waiting + 1))
            os.close(self._write)
            if self._waiting == 0:
                os.close(self._read)


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _write_lines(path: str, lines: List[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def _install_config(staging: str, final: str) -> bool:
    """Move the freshly resolved config into place only if it changed.

    An unchanged file keeps its timestamp, so make does not reset the
    output folder or rebuild everything that depends on autoconf.h.
    """
    with open(staging, "rb") as f:
        new = f.read()
    changed = True
    try:
        with open(final, "rb") as f:
            changed = f.read() != new
    except FileNotFoundError:
        pass
    if changed:
        os.replace(staging, final)
    else:
        os.remove(staging)
    _remove_files(staging + ".old")      # kconfiglib's backup of the fragment
    return changed


def _remove_files(*paths: str) -> None:
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def _hash_paths(root: str, paths: List[str]) -> str:
    digest = hashlib.sha256()
    for rel in sorted(set(paths)):
        full = os.path.join(root, rel)
        digest.update(rel.encode("utf-8", "surrogateescape") + b"\0")
        if os.path.isfile(full):
            digest.update(file_sha256(full).encode())
        elif os.path.islink(full):
            digest.update(b"link:" + os.readlink(full).encode("utf-8", "surrogateescape"))
        else:
            digest.update(b"missing")
    return digest.hexdigest()


def _tree_fingerprint(root: str) -> str:
    """Without git: names, sizes and times of the files that make reads."""
    digest = hashlib.sha256()
    for base, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("out", ".git", "__pycache__"))
        for name in sorted(files):
            if name in (".config", ".config.old") or name.endswith(".pyc"):
                continue
            path = os.path.join(base, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            digest.update(f"{os.path.relpath(path, root)}\0{st.st_size}\0{st.st_mtime_ns}\n"
                          .encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _kconfig_digest(root: str) -> str:
    """Blocking: sha256 of what ``make olddefconfig`` reads besides the config itself.

    Every ``Kconfig*`` file under ``src/``, the top Makefile and the
    checkout's own kconfiglib, by name and content.
    """
    digest = hashlib.sha256()
    paths = [os.path.join(root, "Makefile"),
             os.path.join(root, "lib", "kconfiglib", "kconfiglib.py")]
    for base, dirs, files in os.walk(os.path.join(root, "src")):
        dirs.sort()
        paths.extend(os.path.join(base, f) for f in sorted(files) if f.startswith("Kconfig"))
    for path in paths:
        digest.update(os.path.relpath(path, root).encode("utf-8", "surrogateescape") + b"\0")
        try:
            digest.update(file_sha256(path).encode())
        except OSError:
            digest.update(b"missing")
    return digest.hexdigest()


def _write_stamp(config_path: str, stamp_path: str, stamp: str) -> None:
    """Record what the config file was resolved from (and its own sha256)."""
    with open(stamp_path, "w", encoding="utf-8") as f:
        f.write(f"{stamp} {file_sha256(config_path)}\n")


def _config_if_stamped(config_path: str, stamp_path: str, stamp: str
                       ) -> Optional[Dict[str, str]]:
    """Blocking: the config file's symbols if it was resolved from ``stamp`` and is unchanged."""
    try:
        with open(stamp_path, encoding="utf-8") as f:
            recorded = f.read().split()
        if recorded[:-1] != stamp.split() or file_sha256(config_path) != recorded[-1]:
            return None
        with open(config_path, encoding="utf-8") as f:
            return parse_config(f.read())
    except (OSError, IndexError, UnicodeDecodeError):
        return None


def _damaged_files(artifact: Artifact) -> List[str]:
    """Blocking: the artifact's files that are missing or fail their recorded sha256."""
    damaged = []
    for record in artifact.files:
        path = artifact.path(record.name)
        if not os.path.isfile(path):
            damaged.append(f"{record.name} is missing")
        elif os.path.getsize(path) != record.size or file_sha256(path) != record.sha256:
            damaged.append(f"{record.name} fails its sha256")
    return damaged


def _disk_full_error(where: str) -> BuildError:
    return BuildError(
        f"The disk is full: no space left to write {where}",
        hint="Free some disk space (old logs, timelapse videos, gcode files), "
             "then build again.")


class Builder:
    """Builds profiles into ``build_root`` and keeps their artifacts."""

    def __init__(self, build_root: str, klipper_path: Optional[str] = None,
                 katapult_path: Optional[str] = None, keep: int = 3,
                 jobs: Optional[int] = None, nice: int = 10,
                 make_timeout: float = 900.0, make: str = "make",
                 cross_compiler: Optional[Callable[[str], Optional[str]]] = None,
                 ccache: str = "auto") -> None:
        self.build_root = os.path.abspath(os.path.expanduser(build_root))
        self.paths = {
            "klipper": os.path.abspath(os.path.expanduser(klipper_path)) if klipper_path else None,
            "katapult": os.path.abspath(os.path.expanduser(katapult_path)) if katapult_path else None,
        }
        self.store = ArtifactStore(self.build_root, keep)
        self.jobs = jobs or os.cpu_count() or 1
        self.nice = nice
        self.make_timeout = make_timeout
        self.make = make
        # "auto": compile through ccache when it is installed; "no": never; else its path
        self.ccache = ccache
        # mcu -> the compiler a build needs (the Machine's answer); default: this computer's
        if cross_compiler is None:
            from .machine import RealMachine
            cross_compiler = RealMachine().cross_compiler
        self.cross_compiler = cross_compiler
        self._locks: Dict[str, asyncio.Lock] = {}
        # checkout -> ((describe, fingerprint), its Kconfig symbol table)
        self._tables: Dict[str, Tuple[Tuple[str, str], Dict[str, SymbolInfo]]] = {}
        self._table_locks: Dict[str, asyncio.Lock] = {}

    @classmethod
    def from_settings(cls, settings: Settings, machine: Optional[Machine] = None
                      ) -> Builder:
        """The builder the ``[octoflash]`` settings describe, for ``machine``'s compilers."""
        if machine is None:
            from .machine import load_machine
            machine = load_machine(settings)
        return cls(settings.build_path, klipper_path=settings.klipper_path,
                   katapult_path=settings.katapult_path, keep=settings.builds_kept,
                   jobs=settings.build_jobs, nice=settings.build_nice,
                   make_timeout=settings.make_timeout, cross_compiler=machine.cross_compiler,
                   ccache=str(getattr(settings, "build_ccache", "auto")))

    # --- the checkout ----------------------------------------------------------

    def checkout(self, target: str) -> str:
        """The source folder for ``target``; NotFoundError saying which option to set."""
        if target not in TARGETS:
            raise ValidationError(f"Unknown build target {target!r} (klipper or katapult)")
        name, option, flag, url = TARGETS[target]
        path = self.paths.get(target)
        how = (f"set {option} in the [octoflash] section of moonraker.conf "
               f"(command line: {flag} DIR)")
        if not path:
            raise NotFoundError(f"No {name} checkout is configured: {how}")
        if not os.path.isdir(path):
            raise NotFoundError(
                f"No {name} checkout at {path}: the folder does not exist",
                hint=f"Clone it there (git clone {url} {path}) or {how}.")
        missing = [p for p in ("Makefile", os.path.join("src", "Kconfig"))
                   if not os.path.isfile(os.path.join(path, p))]
        if missing:
            raise NotFoundError(
                f"No {name} checkout at {path}: {' and '.join(missing)} not found there",
                hint=f"Point {option} at the folder {name} was cloned into ({flag} DIR).")
        check_make_path(path, f"{name} checkout")
        return path

    async def check_kconfig(self, profile: object,
                            version: Optional[SourceVersion] = None) -> None:
        """Refuse, before make runs, a profile whose symbols the checkout does not
        have or cannot set, or whose values do not fit the symbols' types.

        The checkout's symbol table is read once per checkout state (git
        describe and the fingerprint of uncommitted changes).
        """
        target: str = profile.target  # type: ignore[attr-defined]
        source_dir = self.checkout(target)
        requested, _text, _sha = self.rendered(profile)
        if version is None:
            version = await self.source_version(target)
        state = (version.describe, version.fingerprint)
        async with self._table_locks.setdefault(source_dir, asyncio.Lock()):
            cached = self._tables.get(source_dir)
            if cached is None or cached[0] != state:
                table = await read_symbol_table(source_dir, timeout=OLDDEFCONFIG_TIMEOUT)
                self._tables[source_dir] = (state, table)
            else:
                table = cached[1]
        check_against_kconfig(requested, table,
                              f"profile '{profile.name}'")  # type: ignore[attr-defined]

    async def source_version(self, target: str) -> SourceVersion:
        """What the checkout holds now: git describe, dirty flag and a fingerprint.

        The fingerprint covers the content of every modified and untracked
        (not ignored) file, so a second edit of an already dirty tree still
        counts as a change.  Within one ``build_many`` each checkout is read
        once (its profiles start from the same state; ``git`` runs once).
        """
        memo = _SOURCE_READS.get()
        if memo is None:
            return await self._read_source_version(target)
        key = self.checkout(target)
        read = memo.get(key)
        if read is None:
            read = memo[key] = asyncio.ensure_future(self._read_source_version(target))
        return await asyncio.shield(read)

    async def _read_source_version(self, target: str) -> SourceVersion:
        path = self.checkout(target)
        env = {"GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
        git = find_program("git")
        if git is None or not os.path.exists(os.path.join(path, ".git")):
            return SourceVersion("?", False, await asyncio.to_thread(_tree_fingerprint, path))
        described = await run_tool([git, "describe", "--always", "--tags", "--long", "--dirty"],
                                   timeout=GIT_TIMEOUT, cwd=path, env=env, what="git describe")
        if described.returncode != 0 or not described.lines:
            return SourceVersion("?", False, await asyncio.to_thread(_tree_fingerprint, path))
        describe = described.lines[-1].strip()
        status = await run_tool([git, "status", "--porcelain=v1", "-z", "--untracked-files=all"],
                                timeout=GIT_TIMEOUT, cwd=path, env=env, what="git status")
        changed: List[str] = []
        errors = set(status.stderr_lines)
        entries = "\n".join(x for x in status.lines if x not in errors).split("\0")
        skip_next = False
        for entry in entries:
            if skip_next:          # the old name of a rename
                skip_next = False
                continue
            if len(entry) < 4:
                continue
            changed.append(entry[3:])
            skip_next = "R" in entry[:2] or "C" in entry[:2]
        fingerprint = await asyncio.to_thread(_hash_paths, path, changed) if changed else ""
        return SourceVersion(describe, describe.endswith("-dirty"), fingerprint)

    # --- what a build would produce ----------------------------------------------

    @staticmethod
    def rendered(profile: object) -> Tuple[Dict[str, str], str, str]:
        """(requested symbols, rendered .config text, its sha256) of a profile."""
        requested = dict(profile.kconfig())  # type: ignore[attr-defined]
        text = render_config(requested)
        return requested, text, _sha256_text(text)

    async def pending_version(self, profile: object) -> str:
        """The version a build would produce now, for the update manager.

        The checkout's describe string, plus ``+config.<sha>`` when the
        profile's rendered config differs from its last good build.
        """
        version = await self.source_version(profile.target)  # type: ignore[attr-defined]
        _req, _text, sha = self.rendered(profile)
        last = await self.latest(profile.name)  # type: ignore[attr-defined]
        if last is not None and last.rendered_sha256 and last.rendered_sha256 != sha:
            return f"{version.describe}+config.{sha[:8]}"
        return version.describe

    async def latest(self, profile_name: str) -> Optional[Artifact]:
        return await asyncio.to_thread(self.store.latest, profile_name)

    async def artifacts(self, profile_name: str) -> List[Artifact]:
        return await asyncio.to_thread(self.store.list, profile_name)

    async def artifact(self, profile_name: str, artifact_id: str) -> Artifact:
        return await asyncio.to_thread(self.store.get, profile_name, artifact_id)

    # --- building -------------------------------------------------------------------

    async def build(self, profile: object, force: bool = False,
                    on_progress: Optional[ProgressCallback] = None) -> BuildResult:
        """Build ``profile`` (or return its last artifact when nothing changed)."""
        emit = on_progress or null_progress
        name: str = profile.name  # type: ignore[attr-defined]
        source_dir = self.checkout(profile.target)  # type: ignore[attr-defined]
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            return await self._guarded(name, self._build_locked(profile, source_dir, force, emit))

    async def _up_to_date(self, last: Optional[Artifact], version: SourceVersion,
                          rendered_sha: str, target: str) -> Tuple[bool, List[str]]:
        """(nothing to build, the kept files that fail their record).

        The last build is up to date when the checkout and the rendered
        config are those it was built from and its files are still what its
        record says: a file that is missing or fails its sha256 (the flash
        checks refuse it) makes it out of date, so "build again" repairs it.
        The files are hashed in a thread.
        """
        if last is None or last.target != target:
            return False, []
        if (last.source_version, last.source_fingerprint, last.rendered_sha256) != \
                (version.describe, version.fingerprint, rendered_sha):
            return False, []
        damaged = await asyncio.to_thread(_damaged_files, last)
        return not damaged, damaged

    def _check_toolchain(self, target: str, mcu: str) -> None:
        if find_program(self.make) is None:
            raise UnavailableError(f"'{self.make}' is not installed, so firmware cannot be built",
                                   hint="Install it with: sudo apt install make")
        compiler = self.cross_compiler(mcu)
        if compiler is not None and find_program(compiler) is None:
            packages = CROSS_PACKAGES.get(compiler, compiler)
            raise UnavailableError(
                f"The cross compiler for {mcu} ({compiler}) is not installed, so "
                f"{TARGETS[target][0]} cannot be built for this board",
                hint=f"Install it with: sudo apt install {packages}")

    async def _build_locked(self, profile: object, source_dir: str, force: bool,
                            emit: ProgressCallback) -> BuildResult:
        prepared = await self._prepare(profile, source_dir, force, emit)
        if isinstance(prepared, BuildResult):
            return prepared
        return await self._make_and_keep(prepared, None)

    async def _prepare(self, profile: object, source_dir: str, force: bool,
                       emit: ProgressCallback) -> Union[BuildResult, _Pending]:
        """Everything before make: the up-to-date check, the checks, the resolved config.

        Returns the last artifact (as a skipped ``BuildResult``) when nothing
        changed, else what make needs.
        """
        name: str = profile.name  # type: ignore[attr-defined]
        target: str = profile.target  # type: ignore[attr-defined]
        mcu: str = profile.mcu  # type: ignore[attr-defined]
        requested, _text, rendered_sha = self.rendered(profile)
        version = await self.source_version(target)
        last = await self.latest(name)
        damaged: List[str] = []
        if not force:
            up_to_date, damaged = await self._up_to_date(last, version, rendered_sha, target)
            if up_to_date:
                assert last is not None
                emit(Progress("done", f"{name}: up to date ({last.source_version}), not rebuilt",
                              100.0, kind="step"))
                return BuildResult(last, True, last.path(last.log_file))
        if damaged:
            assert last is not None
            emit(Progress("configure", f"{name}: build {last.id} no longer matches its record "
                          f"({'; '.join(damaged)}): building again from an empty output folder",
                          None, kind="step"))

        self._check_toolchain(target, mcu)
        check_make_path(self.build_root, "The build folder (build_path)")
        pdir = self.store.profile_dir(name)
        config_path = os.path.join(pdir, "config")
        out_dir = os.path.join(pdir, "out")
        log_path = os.path.join(pdir, "build.log")
        stamp_path = os.path.join(pdir, "config.stamp")
        kept = await self.artifacts(name)
        expected = max((a.log_lines for a in kept), default=0) or None
        log = _BuildLog(emit, expected)
        kconfig_sha = await asyncio.to_thread(_kconfig_digest, source_dir)
        stamp = f"{rendered_sha} {kconfig_sha} {mcu}"
        resolved: Optional[Dict[str, str]] = None
        if not force and not damaged:
            resolved = await asyncio.to_thread(_config_if_stamped, config_path, stamp_path, stamp)
        if resolved is not None:
            # The same request, read by the same Kconfig files: the check and
            # make olddefconfig would give the config file that is there already.
            emit(Progress("configure", f"Configuration of {name} unchanged ({version.describe}): "
                          "make olddefconfig not needed", None, kind="step"))
            log.header(f"(configuration unchanged since the last build: {config_path})")
            resolved_mcu = config_value(resolved, "CONFIG_MCU")
        else:
            await self.check_kconfig(profile, version)
            emit(Progress("configure", f"Configuring {name} ({version.describe})", None,
                          kind="step"))
            staging = config_path + ".next"
            log.header(f"$ make olddefconfig OUT={os.path.join(pdir, 'kconfig-out')}/ "
                       f"KCONFIG_CONFIG={staging}")
            try:
                resolved = await resolve_config(
                    source_dir, staging, requested, timeout=OLDDEFCONFIG_TIMEOUT,
                    make=self.make, out_dir=os.path.join(pdir, "kconfig-out"), nice=self.nice,
                    on_line=log.configure_line, label=f"profile '{name}'")
            except (ValidationError, BuildError) as exc:
                log.header(str(exc))
                await asyncio.to_thread(_write_lines, log_path, log.lines)
                await asyncio.to_thread(_remove_files, staging, staging + ".old",
                                        staging + ".tmp")
                raise
            resolved_mcu = config_value(resolved, "CONFIG_MCU")
            if resolved_mcu != mcu:
                await asyncio.to_thread(_remove_files, staging, staging + ".old")
                raise ValidationError(
                    f"profile '{name}': its configuration is for MCU {resolved_mcu or 'none'}, "
                    f"but the profile's preset is for {mcu}; nothing was compiled",
                    hint="Remove the processor model symbols from the profile's kconfig "
                         "overrides, or choose the preset for this MCU.")
            await asyncio.to_thread(_install_config, staging, config_path)
            await asyncio.to_thread(_write_stamp, config_path, stamp_path, stamp)

        if force or damaged:
            # --force is for "something is off", as is a kept file that changed after
            # its build: start from an empty output folder.
            await asyncio.to_thread(shutil.rmtree, out_dir, True)
        elif last is None or (last.source_version, last.source_fingerprint) != \
                (version.describe, version.fingerprint):
            # The version string is embedded by compile_time_request.o, which make
            # would not rebuild for a commit that touched no source file.
            await asyncio.to_thread(_remove_files,
                                    os.path.join(out_dir, "compile_time_request.o"))
        return _Pending(profile=profile, name=name, target=target, mcu=mcu,
                        source_dir=source_dir, version=version, rendered_sha=rendered_sha,
                        resolved=resolved, resolved_mcu=resolved_mcu or mcu,
                        config_path=config_path, out_dir=out_dir, log_path=log_path,
                        log=log, emit=emit)

    def _ccache_env(self, mcu: str) -> Dict[str, str]:
        """PATH for make with ccache standing in for the cross compiler, when the user has ccache.

        The usual masquerade: a folder holding a link named after the
        compiler (``arm-none-eabi-gcc``) to ccache, first in PATH, so that
        every compile of the Makefile goes through the cache while the
        Makefile itself, its ``CC`` and the ``$(CC) --version`` line that
        Klipper writes into the image stay exactly as without ccache.
        Nothing when ccache is not installed, is turned off, or the build
        needs no cross compiler.
        """
        compiler = self.cross_compiler(mcu)
        ccache = self._ccache_program()
        if not compiler or not ccache or os.sep in compiler or find_program(compiler) is None:
            return {}
        folder = os.path.join(self.build_root, ".ccache-bin")
        link = os.path.join(folder, compiler)
        try:
            if os.path.realpath(link) != os.path.realpath(ccache):
                os.makedirs(folder, exist_ok=True)
                _remove_files(link)
                os.symlink(ccache, link)
        except OSError:
            return {}       # cannot set it up here: build without the cache
        return {"PATH": folder + os.pathsep + os.environ.get("PATH", os.defpath)}

    def _ccache_program(self) -> Optional[str]:
        if self.ccache in ("", "no", "off", "false"):
            return None
        if self.ccache == "auto":
            return find_program("ccache")
        return find_program(self.ccache)

    async def _make_and_keep(self, job: _Pending, jobserver: Optional[_Jobserver]
                             ) -> BuildResult:
        """Run make for a prepared profile (alone, or on a shared jobserver) and keep the result."""
        name, log, emit = job.name, job.log, job.emit
        variables = [f"OUT={job.out_dir}{os.sep}", f"KCONFIG_CONFIG={job.config_path}"]
        env = {"KCONFIG_CONFIG": job.config_path}
        ccache_env = await asyncio.to_thread(self._ccache_env, job.mcu)
        if ccache_env:
            env.update(ccache_env)
            log.header("(compiling through ccache)")
        pass_fds: Tuple[int, ...] = ()
        if jobserver is None:
            argv = [self.make, f"-j{self.jobs}"] + variables
            shown = f"make -j{self.jobs}"
        else:
            # No -j here: make takes its job slots from the shared jobserver
            # (a -j on the command line would make it start a jobserver of its own).
            argv = [self.make] + variables
            env["MAKEFLAGS"] = jobserver.makeflags
            pass_fds = jobserver.fds
            shown = f"make (sharing {self.jobs} jobs with {jobserver.builds - 1} other build(s))"
        log.header("$ " + " ".join(argv))
        emit(Progress("compile", f"{shown} in {job.source_dir}", log.percent(), kind="step"))
        log.stage = "compile"
        started = time.monotonic()
        token = await jobserver.acquire() if jobserver is not None else None
        try:
            result = await run_tool(argv, timeout=self.make_timeout, cwd=job.source_dir,
                                    env=env, on_line=log.make_line, nice=self.nice,
                                    what="make", pass_fds=pass_fds)
        except ToolTimeout:
            log.header(f"make did not finish within {self.make_timeout:g} s and was stopped")
            await asyncio.to_thread(_write_lines, job.log_path, log.lines)
            raise BuildError(f"profile '{name}': make did not finish within "
                             f"{self.make_timeout:g} s and was stopped",
                             log_tail=log.tail(), hint=f"The whole log is in {job.log_path}") from None
        finally:
            if jobserver is not None and token is not None:
                jobserver.release(token)
        seconds = time.monotonic() - started
        await asyncio.to_thread(_write_lines, job.log_path, log.lines)
        if result.returncode != 0:
            if any("No space left on device" in line for line in result.lines):
                raise _disk_full_error(job.out_dir)
            raise BuildError(f"profile '{name}': make failed (exit code {result.returncode})",
                             log_tail=log.tail(), returncode=result.returncode,
                             hint=f"The whole log is in {job.log_path}")

        files = self._output_files(name, job.target, job.out_dir, job.resolved)
        fields = await self._image_facts(name, job.target, job.mcu, job.version, files,
                                         job.resolved)
        emit(Progress("link", "Saving the artifact", 99.0, kind="step"))
        artifact = await asyncio.to_thread(
            self.store.add, profile=name, preset=job.profile.preset.id,
            target=job.target, mcu=job.resolved_mcu,
            app_address=int(fields.pop("app_address")),  # type: ignore[call-overload]
            source_version=job.version.describe, files=files, config_path=job.config_path,
            log_path=job.log_path, source_dirty=job.version.dirty,
            source_fingerprint=job.version.fingerprint, rendered_sha256=job.rendered_sha,
            log_lines=log.make_lines, build_seconds=round(seconds, 3),
            **fields)  # type: ignore[arg-type]
        main = artifact.file()
        emit(Progress("done", f"Built {main.name} for {name}: {main.size} bytes, "
                              f"{artifact.source_version}", 100.0, kind="step"))
        return BuildResult(artifact, False, artifact.path(artifact.log_file))

    async def build_many(self, profiles: Sequence[object], force: bool = False,
                         on_progress: Optional[Callable[[str], ProgressCallback]] = None
                         ) -> List[Union[BuildResult, BaseException]]:
        """Build several profiles at once; one result (or the error) per profile, in order.

        Each profile is checked and configured first, one after the other;
        then every profile that needs compiling runs its own make, all of
        them sharing one make jobserver with ``jobs`` slots, so one
        profile's link (Klipper links with LTO, on one core) overlaps
        another's compiles and never more than ``jobs`` compilers run.
        ``on_progress(name)`` gives each profile's progress callback.
        """
        names = [p.name for p in profiles]  # type: ignore[attr-defined]
        if len(set(names)) != len(names):
            raise ValidationError("A profile is named twice: " + ", ".join(names))
        reads = _SOURCE_READS.set({})
        try:
            return await self._build_many(profiles, names, force, on_progress)
        finally:
            _SOURCE_READS.reset(reads)

    async def _build_many(self, profiles: Sequence[object], names: List[str], force: bool,
                          on_progress: Optional[Callable[[str], ProgressCallback]]
                          ) -> List[Union[BuildResult, BaseException]]:
        results: List[Union[BuildResult, BaseException, None]] = [None] * len(profiles)
        pending: List[Tuple[int, _Pending]] = []
        async with contextlib.AsyncExitStack() as stack:
            # Always in the same (name) order, so two callers never wait on each other.
            for name in sorted(names):
                await stack.enter_async_context(self._locks.setdefault(name, asyncio.Lock()))
            # Configured side by side too (make olddefconfig is a Python run each),
            # at most ``jobs`` at a time.
            slots = asyncio.Semaphore(max(1, self.jobs))

            async def prepare(index: int, profile: Any) -> Union[BuildResult, _Pending]:
                emit = on_progress(names[index]) if on_progress else null_progress
                async with slots:
                    source_dir = self.checkout(profile.target)
                    return await self._guarded(names[index], self._prepare(
                        profile, source_dir, force, emit))

            prepared_all = await asyncio.gather(
                *(prepare(i, p) for i, p in enumerate(profiles)), return_exceptions=True)
            for index, prepared in enumerate(prepared_all):
                if isinstance(prepared, _Pending):
                    pending.append((index, prepared))
                elif isinstance(prepared, (BuildResult, OctoflashError)):
                    results[index] = prepared
                else:
                    raise prepared
            if len(pending) == 1:
                index, job = pending[0]
                try:
                    results[index] = await self._guarded(job.name,
                                                         self._make_and_keep(job, None))
                except OctoflashError as exc:
                    results[index] = exc
            elif pending:
                with _Jobserver(self.jobs, len(pending)) as jobserver:
                    outcomes: List[Union[BuildResult, BaseException]] = list(
                        await asyncio.gather(
                            *(self._guarded(job.name, self._make_and_keep(job, jobserver))
                              for _i, job in pending), return_exceptions=True))
                for (index, _job), outcome in zip(pending, outcomes):
                    results[index] = outcome
        for done in results:
            if isinstance(done, BaseException) and not isinstance(done, Exception):
                raise done          # cancelled, interrupted: not one profile's failure
        return [r for r in results if r is not None]

    async def _guarded(self, name: str, body: Awaitable[_T]) -> _T:
        """``body``, with a full disk and other OS errors said as build errors."""
        try:
            return await body
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise _disk_full_error(self.store.profile_dir(name)) from exc
            raise BuildError(f"profile '{name}': {exc.strerror or exc}"
                             + (f": {exc.filename}" if exc.filename else "")) from exc

    @staticmethod
    def _output_files(name: str, target: str, out_dir: str,
                      resolved: Mapping[str, str]) -> Dict[str, str]:
        wanted = ["klipper.bin"] if target == "klipper" else ["katapult.bin"]
        if target == "klipper" and resolved.get("CONFIG_RP2040_HAVE_STAGE2") == "y":
            # An RP2040 image that boots from the ROM is built as klipper.uf2 only.
            wanted = ["klipper.uf2"]
        if target == "katapult" and resolved.get("CONFIG_BUILD_DEPLOYER") == "y":
            wanted.append("deployer.bin")
        files = {}
        for fname in wanted:
            path = os.path.join(out_dir, fname)
            if not os.path.isfile(path):
                raise BuildError(f"profile '{name}': make finished but {path} was not produced")
            files[fname] = path
        # The RP2040 boot ROM's file, kept for a first install through BOOTSEL.
        extra = "katapult.uf2" if target == "katapult" else "klipper.uf2"
        if extra not in files and os.path.isfile(os.path.join(out_dir, extra)):
            files[extra] = os.path.join(out_dir, extra)
        return files

    async def _image_facts(self, name: str, target: str, mcu: str, version: SourceVersion,
                           files: Mapping[str, str], resolved: Mapping[str, str]) -> Dict[str, object]:
        """Addresses from the resolved config; MCU and version from klipper.bin."""
        facts: Dict[str, object] = {"flash_size": config_int(resolved, "CONFIG_FLASH_SIZE")}
        if target == "klipper":
            facts["app_address"] = config_int(resolved, "CONFIG_FLASH_APPLICATION_ADDRESS") \
                or config_int(resolved, "CONFIG_FLASH_BOOT_ADDRESS") or 0
            image = files.get("klipper.bin") or next(iter(files.values()))
            info = await asyncio.to_thread(read_data_dictionary_file, image)
            if info is None:
                raise BuildError(f"profile '{name}': {image} carries no Klipper "
                                 "data dictionary, so its MCU cannot be confirmed")
            dict_mcu = str(info.get("config", {}).get("MCU", ""))
            dict_version = str(info.get("version", ""))
            if dict_mcu != mcu:
                raise BuildError(f"profile '{name}': klipper.bin was built for "
                                 f"{dict_mcu or 'an unknown MCU'}, not {mcu} as the profile "
                                 "says; it was not kept")
            if version.describe != "?" and dict_version != version.describe \
                    and not dict_version.startswith(version.describe + "-"):
                raise BuildError(
                    f"profile '{name}': klipper.bin reports version {dict_version}, but the "
                    f"checkout is at {version.describe}; it was not kept",
                    hint="Build again with --force to rebuild it from scratch.")
            facts.update(dict_mcu=dict_mcu, dict_version=dict_version)
        else:
            facts["app_address"] = config_int(resolved, "CONFIG_FLASH_START") \
                or config_int(resolved, "CONFIG_FLASH_BOOT_ADDRESS") or 0x08000000
            facts["bootloader_app_start"] = config_int(resolved, "CONFIG_LAUNCH_APP_ADDRESS")
            if "deployer.bin" in files:
                facts["deployer_address"] = config_int(resolved, "CONFIG_FLASH_APPLICATION_ADDRESS")
        return facts
