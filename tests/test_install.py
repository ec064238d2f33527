"""install.sh against a KIAUH-like layout in a temporary home.

The Moonraker virtualenv is stood in for by a folder whose ``bin/python``
passes everything to this Python except ``pip``, which it records (the
package is already installed here); ``bin/octoflash`` is the real command
line.  The link, the config sections and the uninstall are real.
"""
import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(path, text):
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def kiauh_home(tmp_path):
    home = tmp_path / "home"
    components = home / "moonraker" / "moonraker" / "components"
    components.mkdir(parents=True)
    (components / "__init__.py").write_text("")
    (components / "klippy_apis.py").write_text("# stands in for Moonraker's own file\n")
    venv_bin = home / "moonraker-env" / "bin"
    venv_bin.mkdir(parents=True)
    pip_log = tmp_path / "pip.log"
    _script(venv_bin / "python", textwrap.dedent(f"""\
        #!/bin/sh
        if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "$@" >> {pip_log}; exit 0; fi
        exec {sys.executable} "$@"
        """))
    _script(venv_bin / "octoflash", textwrap.dedent(f"""\
        #!/bin/sh
        PYTHONPATH={ROOT} exec {sys.executable} -m moonraker_octoflash.cli "$@"
        """))
    config = home / "printer_data" / "config"
    config.mkdir(parents=True)
    (config / "moonraker.conf").write_text("[server]\nhost: 0.0.0.0\n")
    return home, pip_log


def run_install(home, *args):
    env = dict(os.environ, HOME=str(home), OCTOFLASH_ALLOW_ROOT="1")
    return subprocess.run(["bash", os.path.join(ROOT, "install.sh"), "--no-restart", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_install_links_component_and_adds_sections_once(kiauh_home):
    home, pip_log = kiauh_home
    proc = run_install(home)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    link = home / "moonraker" / "moonraker" / "components" / "octoflash.py"
    assert link.exists()
    assert "pip install -q -e " + ROOT in pip_log.read_text()
    conf = (home / "printer_data" / "config" / "moonraker.conf").read_text()
    assert conf.count("[octoflash]") == 1
    navi = json.loads((home / "printer_data" / "config" / ".theme" / "navi.json").read_text())
    assert [entry["href"] for entry in navi] == ["/server/octoflash/web"]
    # again: nothing is added twice
    proc = run_install(home)
    assert proc.returncode == 0, proc.stderr
    conf = (home / "printer_data" / "config" / "moonraker.conf").read_text()
    assert conf.count("[octoflash]") == 1
    navi = json.loads((home / "printer_data" / "config" / ".theme" / "navi.json").read_text())
    assert len(navi) == 1

    proc = run_install(home, "--uninstall")
    assert proc.returncode == 0, proc.stderr
    assert not link.exists()
    assert "uninstall -y -q moonraker-octoflash" in pip_log.read_text()


def test_dry_run_changes_nothing(kiauh_home):
    home, pip_log = kiauh_home
    conf_path = home / "printer_data" / "config" / "moonraker.conf"
    before = conf_path.read_text()
    proc = run_install(home, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "would run:" in proc.stdout
    assert conf_path.read_text() == before
    assert not (home / "moonraker" / "moonraker" / "components" / "octoflash.py").exists()
    assert not pip_log.exists()


def test_wrong_layout_is_explained(tmp_path):
    proc = run_install(tmp_path)
    assert proc.returncode != 0
    assert "--venv" in proc.stderr
