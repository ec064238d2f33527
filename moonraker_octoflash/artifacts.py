"""Artifact records: what a good build produced, and where it lives.

(The lead wrote the record types below as the shared contract; the build
engineer owns this file and adds ArtifactStore and the data-dictionary
reader.)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional


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

    @property
    def main_file(self) -> str:
        return "klipper.bin" if self.target == "klipper" else "katapult.bin"

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
        if self.bootloader_app_start is not None:
            data["bootloader_app_start"] = f"0x{self.bootloader_app_start:08x}"
        return data

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Artifact":
        data = dict(data)
        data["files"] = [ArtifactFile(**f) for f in data.get("files", [])]
        data["app_address"] = int(str(data["app_address"]), 0)
        if data.get("bootloader_app_start") is not None:
            data["bootloader_app_start"] = int(str(data["bootloader_app_start"]), 0)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
