"""Artifact records: what a good build produced, and where it lives.

Each good build of a profile is kept in its own folder,
``<build root>/<profile>/artifacts/<id>/``, holding the firmware files, the
resolved ``config``, the whole ``build.log`` and ``artifact.json`` (the
record below).  The last ``keep`` artifacts of each profile are kept so an
earlier firmware can be written again.

``read_data_dictionary`` finds the data dictionary Klipper embeds in
``klipper.bin`` (zlib-compressed JSON): it tells which MCU and version an
image is for, the same check Katapult's flashtool makes before writing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import struct
import time
import zlib
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .errors import NotFoundError, ValidationError


@dataclasses.dataclass
class ArtifactFile:
    name: str          # "klipper.bin", "katapult.bin", "deployer.bin"
    size: int
    sha256: str


@dataclasses.dataclass
class Artifact:
    id: str                        # unique per profile, sortable by time
    profile: str
    preset: str
    target: str                    # "klipper" or "katapult"
    mcu: str                       # CONFIG_MCU of the resolved config
    app_address: int               # where the main image is linked (resolved config)
    source_version: str            # git describe of the checkout (+ "-dirty")
    config_sha256: str             # of the rendered, resolved .config
    files: List[ArtifactFile]
    created: float                 # unix time
    directory: str                 # folder holding the files, record, config and log
    bootloader_app_start: Optional[int] = None   # Katapult: where it starts applications
    flash_size: Optional[int] = None             # CONFIG_FLASH_SIZE when known
    dict_mcu: Optional[str] = None               # from klipper.bin's data dictionary
    dict_version: Optional[str] = None           # idem
    # Added by the build engineer (the Builder's cache and the user's record):
    deployer_address: Optional[int] = None       # Katapult: where deployer.bin is linked
    source_dirty: bool = False                   # the checkout had uncommitted changes
    source_fingerprint: str = ""                 # identifies the dirty state (see build.py)
    rendered_sha256: str = ""                    # of the requested .config, before olddefconfig
    log_file: str = "build.log"                  # in ``directory``
    log_lines: int = 0                           # lines make printed (progress estimates)
    build_seconds: float = 0.0                   # wall time of make

    @property
    def main_file(self) -> str:
        wanted = "klipper.bin" if self.target == "klipper" else "katapult.bin"
        if self.files and all(f.name != wanted for f in self.files):
            return self.files[0].name     # an RP2040 image that boots from the ROM: klipper.uf2
        return wanted

    def path(self, name: Optional[str] = None) -> str:
        return os.path.join(self.directory, name or self.main_file)

    def file(self, name: Optional[str] = None) -> ArtifactFile:
        wanted = name or self.main_file
        for f in self.files:
            if f.name == wanted:
                return f
        raise KeyError(wanted)

    @property
    def version(self) -> str:
        """The version a board reports after this firmware is written."""
        return self.dict_version or self.source_version

    def to_json(self) -> Dict[str, Any]:
        data = dataclasses.asdict(self)
        data["app_address"] = f"0x{self.app_address:08x}"
        for key in ("bootloader_app_start", "deployer_address"):
            if getattr(self, key) is not None:
                data[key] = f"0x{getattr(self, key):08x}"
        return data

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> Artifact:
        data = dict(data)
        data["files"] = [ArtifactFile(**f) for f in data.get("files", [])]
        data["app_address"] = int(str(data["app_address"]), 0)
        for key in ("bootloader_app_start", "deployer_address"):
            if data.get(key) is not None:
                data[key] = int(str(data[key]), 0)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# --- the data dictionary inside klipper.bin ----------------------------------------

def _zlib_header_at(data: bytes, index: int) -> bool:
    """Could a zlib stream start here?  (deflate method, valid check bits, no preset dictionary)"""
    cmf, flg = data[index], data[index + 1]
    return (cmf & 0x0f) == 8 and (cmf >> 4) <= 7 and not flg & 0x20 \
        and ((cmf << 8) | flg) % 31 == 0


def read_data_dictionary(data: bytes) -> Optional[Dict[str, Any]]:
    """The Klipper data dictionary embedded in a firmware image, or None.

    The image holds it as zlib-compressed JSON somewhere in its read-only
    data.  Instead of trying to decompress at every offset, only offsets
    that carry a valid zlib header are tried, and a stream must end cleanly
    and decode to a JSON object whose ``app`` is ``Klipper``.
    """
    data = bytes(data)
    for index in range(len(data) - 2):
        if not _zlib_header_at(data, index):
            continue
        inflater = zlib.decompressobj()
        try:
            text = inflater.decompress(data[index:], 16 * 1024 * 1024)
        except zlib.error:
            continue
        if not inflater.eof:
            continue
        try:
            found = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(found, dict) and found.get("app") == "Klipper":
            return found
    return None


UF2_BLOCK = 512
_UF2_MAGIC_START = (0x0A324655, 0x9E5D5157)
_UF2_MAGIC_END = 0x0AB16F30


def uf2_payload(data: bytes) -> Optional[Tuple[int, bytes]]:
    """(start address, flat image) of a UF2 file (the RP2040 boot ROM's format), or None.

    Each 512-byte block carries up to 476 bytes for one flash address; the
    blocks are laid side by side, gaps filled with 0xff as erased flash reads.
    """
    if len(data) < UF2_BLOCK or len(data) % UF2_BLOCK:
        return None
    pieces: List[Tuple[int, bytes]] = []
    for offset in range(0, len(data), UF2_BLOCK):
        block = data[offset:offset + UF2_BLOCK]
        magic0, magic1, _flags, address, size = struct.unpack_from("<IIIII", block)
        (magic_end,) = struct.unpack_from("<I", block, UF2_BLOCK - 4)
        if (magic0, magic1) != _UF2_MAGIC_START or magic_end != _UF2_MAGIC_END or size > 476:
            return None
        pieces.append((address, block[32:32 + size]))
    pieces.sort()
    start = pieces[0][0]
    image = bytearray()
    for address, chunk in pieces:
        gap = address - start - len(image)
        if gap < 0 or gap > 16 * 1024 * 1024:
            return None
        image += b"\xff" * gap + chunk
    return start, bytes(image)


def read_data_dictionary_file(path: str) -> Optional[Dict[str, Any]]:
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".uf2"):
        flat = uf2_payload(data)
        if flat is None:
            return None
        data = flat[1]
    return read_data_dictionary(data)


# --- keeping artifacts ------------------------------------------------------------

_SAFE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
RECORD_NAME = "artifact.json"
CONFIG_NAME = "config"
LOG_NAME = "build.log"


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _SAFE_NAME_RE.fullmatch(name) or ".." in name:
        raise ValidationError(f"Invalid {kind} name {name!r}")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


class ArtifactStore:
    """The kept builds of every profile under ``root``.

    Methods touch the disk and block: call them from a thread
    (``asyncio.to_thread``) in async code.  Reads are small JSON files.
    """

    def __init__(self, root: str, keep: int = 3) -> None:
        if keep < 1:
            raise ValidationError("At least one build per profile must be kept (keep >= 1)")
        self.root = os.path.abspath(os.path.expanduser(root))
        self.keep = keep

    def profile_dir(self, profile: str) -> str:
        _check_name("profile", profile)
        return os.path.join(self.root, profile)

    def artifacts_dir(self, profile: str) -> str:
        return os.path.join(self.profile_dir(profile), "artifacts")

    def _new_id(self, profile: str, created: float) -> str:
        base = time.strftime("%Y%m%d-%H%M%S", time.gmtime(created))
        base += f"-{int(created * 1000) % 1000:03d}"
        candidate, n = base, 1
        while os.path.exists(os.path.join(self.artifacts_dir(profile), candidate)):
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    def add(self, *, profile: str, preset: str, target: str, mcu: str, app_address: int,
            source_version: str, files: Mapping[str, str], config_path: str,
            log_path: Optional[str] = None, created: Optional[float] = None,
            **fields: Any) -> Artifact:
        """Copy a build's ``files`` (name -> path), config and log into a new artifact.

        The record is written last and the folder appears under its final
        name only when complete, so a crash never leaves half an artifact.
        """
        created = time.time() if created is None else created
        parent = self.artifacts_dir(profile)
        os.makedirs(parent, exist_ok=True)
        art_id = self._new_id(profile, created)
        final = os.path.join(parent, art_id)
        staging = os.path.join(parent, f".tmp-{art_id}")
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        try:
            records: List[ArtifactFile] = []
            for name, src in files.items():
                _check_name("file", name)
                dest = os.path.join(staging, name)
                shutil.copyfile(src, dest)
                records.append(ArtifactFile(name=name, size=os.path.getsize(dest),
                                            sha256=file_sha256(dest)))
            shutil.copyfile(config_path, os.path.join(staging, CONFIG_NAME))
            if log_path and os.path.exists(log_path):
                shutil.copyfile(log_path, os.path.join(staging, LOG_NAME))
            artifact = Artifact(
                id=art_id, profile=profile, preset=preset, target=target, mcu=mcu,
                app_address=app_address, source_version=source_version,
                config_sha256=file_sha256(os.path.join(staging, CONFIG_NAME)),
                files=records, created=created, directory=final, log_file=LOG_NAME,
                **fields)
            self._write_record(staging, artifact)
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.prune(profile)
        return artifact

    @staticmethod
    def _write_record(folder: str, artifact: Artifact) -> None:
        path = os.path.join(folder, RECORD_NAME)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(artifact.to_json(), f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(path + ".tmp", path)

    def _load(self, folder: str) -> Optional[Artifact]:
        try:
            with open(os.path.join(folder, RECORD_NAME), encoding="utf-8") as f:
                artifact = Artifact.from_json(json.load(f))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        artifact.directory = folder       # the store may have been moved
        return artifact

    def list(self, profile: str) -> List[Artifact]:
        """The profile's kept artifacts, newest first."""
        parent = self.artifacts_dir(profile)
        try:
            names = os.listdir(parent)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if name.startswith("."):
                continue
            artifact = self._load(os.path.join(parent, name))
            if artifact is not None:
                found.append(artifact)
        found.sort(key=lambda a: (a.created, a.id), reverse=True)
        return found

    def latest(self, profile: str) -> Optional[Artifact]:
        kept = self.list(profile)
        return kept[0] if kept else None

    def get(self, profile: str, artifact_id: str) -> Artifact:
        _check_name("artifact", artifact_id)
        artifact = self._load(os.path.join(self.artifacts_dir(profile), artifact_id))
        if artifact is None:
            kept = ", ".join(a.id for a in self.list(profile)) or "none"
            raise NotFoundError(
                f"No build '{artifact_id}' of profile '{profile}' is kept (kept: {kept})")
        return artifact

    def profiles(self) -> List[str]:
        """Names of the profiles that have kept artifacts."""
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        return [n for n in names if _SAFE_NAME_RE.fullmatch(n)
                and os.path.isdir(os.path.join(self.root, n, "artifacts"))]

    def prune(self, profile: str) -> List[str]:
        """Delete all but the newest ``keep`` artifacts; return the ids removed."""
        removed = []
        for artifact in self.list(profile)[self.keep:]:
            shutil.rmtree(artifact.directory, ignore_errors=True)
            removed.append(artifact.id)
        parent = self.artifacts_dir(profile)
        if os.path.isdir(parent):
            for name in os.listdir(parent):
                if name.startswith(".tmp-"):
                    shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        return removed
