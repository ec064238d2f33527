#!/usr/bin/env bash
# moonraker-octoflash installer: ./install.sh --help tells everything.
set -euo pipefail
case "${BASH_SOURCE[0]}" in */*) here=${BASH_SOURCE[0]%/*} ;; *) here=. ;; esac
SRC_DIR=$(cd "$here" && pwd)
[ -f "$SRC_DIR/moonraker_octoflash/installer.py" ] || { echo "install.sh: cannot find its checkout" >&2; exit 2; }
PYTHON=${OCTOFLASH_INSTALL_PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  printf 'install.sh: %s not found: install it (sudo apt-get install python3)\n' "$PYTHON" >&2
  exit 2
fi
if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)'; then
  printf 'install.sh: %s is older than Python 3.9, which moonraker-octoflash needs\n' "$PYTHON" >&2
  exit 2
fi
# This checkout's package first, whatever the current folder holds.
exec "$PYTHON" -c 'import sys; sys.path.insert(0, sys.argv.pop(1))
from moonraker_octoflash.installer import main
sys.exit(main())' "$SRC_DIR" --source "$SRC_DIR" "$@"
