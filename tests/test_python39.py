"""The package must run on Python 3.9 (Raspberry Pi OS Bullseye).

Tests run on 3.11 here, so vermin checks statically that no newer syntax,
standard-library API or annotation evaluation slipped in.
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_package_needs_nothing_newer_than_python_39():
    proc = subprocess.run(
        [sys.executable, "-c", "import sys, vermin; sys.argv[0] = 'vermin'; sys.exit(vermin.main())",
         "-t=3.9-", "--violations", "--no-tips",
         "--eval-annotations", "--no-parse-comments",
         os.path.join(ROOT, "moonraker_octoflash")],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
