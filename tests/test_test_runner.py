"""scripts/test's folder for the tests' temporary files (OCTOFLASH_TEST_TMPDIR).

Each case runs the real script on one small test file of its own that
writes down the TMPDIR it ran with, in one process and without the lint gate.
"""
import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = '''import os

def test_where(tmp_path):
    with open(os.environ["PROBE_OUT"], "w") as f:
        f.write(os.environ.get("TMPDIR", "") + "\\n" + str(tmp_path))
'''


def run_script(tmp_path: Path, **env: str) -> Tuple[subprocess.CompletedProcess, str, str]:
    """scripts/test on the probe file: (the run, the TMPDIR the test saw, its tmp_path)."""
    probe = tmp_path / "probe" / "test_probe.py"
    probe.parent.mkdir()
    probe.write_text(PROBE)
    out = tmp_path / "seen.txt"
    environ: Dict[str, str] = {k: v for k, v in os.environ.items()
                               if k not in ("TMPDIR", "OCTOFLASH_TEST_TMPDIR",
                                            "PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS")}
    environ.update(OCTOFLASH_LINT="0", OCTOFLASH_TEST_WORKERS="0", PROBE_OUT=str(out), **env)
    proc = subprocess.run([str(ROOT / "scripts" / "test"), "-q", "-p", "no:cacheprovider",
                           "-p", "no:randomly", "-c", str(ROOT / "pyproject.toml"), str(probe)],
                          cwd=ROOT, env=environ, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tmpdir, seen_tmp_path = out.read_text().split("\n")
    return proc, tmpdir, seen_tmp_path


def test_a_folder_of_ones_own_is_used_and_kept_private(tmp_path):
    wanted = tmp_path / "scratch"
    proc, tmpdir, seen = run_script(tmp_path, OCTOFLASH_TEST_TMPDIR=str(wanted))
    assert tmpdir == str(wanted), proc.stderr
    assert Path(seen).is_relative_to(wanted)
    assert wanted.stat().st_mode & 0o777 == 0o700
    # the test passed, so pytest removed its tmp_path when it ended
    assert not Path(seen).exists()


def test_a_link_is_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    proc, tmpdir, seen = run_script(tmp_path, OCTOFLASH_TEST_TMPDIR=str(link))
    assert f"{link} is not a folder of this user's; the tests use the default" in proc.stderr
    assert tmpdir != str(link) and not Path(seen).is_relative_to(link)
    assert list(target.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("chown") is None,
                    reason="making a folder of another user's needs root")
def test_a_folder_of_another_users_is_not_used(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o777)
    os.chown(theirs, 65534, 65534)          # nobody
    proc, tmpdir, seen = run_script(tmp_path, OCTOFLASH_TEST_TMPDIR=str(theirs))
    assert f"{theirs} is not a folder of this user's" in proc.stderr
    assert tmpdir != str(theirs) and list(theirs.iterdir()) == []


def _shm_is_usable() -> bool:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return False
    return os.access("/dev/shm", os.W_OK) and st.f_bavail * st.f_frsize >= 4 * 1024 ** 3


@pytest.mark.skipif(not _shm_is_usable(), reason="no /dev/shm with 4 GiB free here")
def test_by_default_the_tests_run_in_ram(tmp_path):
    proc, tmpdir, seen = run_script(tmp_path)
    mine = f"/dev/shm/oft-{os.getuid()}"
    if "cannot run programs" in proc.stderr:      # a noexec /dev/shm
        assert tmpdir != mine
    else:
        assert tmpdir == mine and seen.startswith(mine + "/")
