#!/usr/bin/env python3
"""Katapult flashtool.py double for the simulated boards of $OCTOFLASH_SIM_DIR (see sim/flashtool.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.realpath(__file__))))))
from moonraker_octoflash.sim.flashtool import main

sys.exit(main(sys.argv[1:]))
