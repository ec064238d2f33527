# moonraker-octoflash: build and flash Klipper/Katapult firmware from Moonraker.
#
# This file is placed in Moonraker's components folder as "octoflash.py" by
# `octoflash link-component`; Moonraker loads it for an [octoflash] section.
# The component itself lives in the installed moonraker_octoflash package,
# so updating that package updates the component without relinking.
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # This file runs as moonraker.components.octoflash: ".." is Moonraker.
    from moonraker.confighelper import ConfigHelper


def load_component(config: ConfigHelper) -> Any:
    started = time.perf_counter()     # the import counts in what Moonraker's start pays
    try:
        from moonraker_octoflash.moonraker.component import load_component as _load
    except ImportError as exc:
        raise config.error(
            "moonraker-octoflash is not installed in the Python environment that "
            f"runs Moonraker ({exc}). Install it there (pip install "
            "moonraker-octoflash) or remove the [octoflash] sections.") from exc
    return _load(config, started)
