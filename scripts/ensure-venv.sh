#!/usr/bin/env bash
# Create the virtual environment and install the project in it, unless that is done already.
#   scripts/ensure-venv.sh        the project (what `make demo` needs)
#   scripts/ensure-venv.sh dev    with the dev extra (what `make test` needs)
# Reinstalls when pyproject.toml is newer than the last install. VENV (default .venv) and
# PYTHON (default python3, at least 3.11) may be set.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
EXTRAS=${1:-}

current() {  # an install marker newer than pyproject.toml: any for the plain project
    local marker
    for marker in "$VENV"/.installed-${EXTRAS:-*}; do
        [ -f "$marker" ] && [ "$marker" -nt pyproject.toml ] && return 0
    done
    return 1
}

if [ ! -x "$VENV/bin/python" ]; then
    if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "txnbackup needs Python >= 3.11; $PY is $("$PY" -V 2>&1 || echo missing)" >&2
        echo "set PYTHON to one, e.g. PYTHON=python3.11 make demo" >&2
        exit 1
    fi
    echo "creating $VENV with $PY" >&2
    "$PY" -m venv "$VENV"
fi
if ! current; then
    echo "installing txnbackup${EXTRAS:+[$EXTRAS]} into $VENV (log: $VENV/install.log)" >&2
    if ! { "$VENV/bin/python" -m pip install --upgrade pip \
        && "$VENV/bin/python" -m pip install -e ".${EXTRAS:+[$EXTRAS]}"; } >"$VENV/install.log" 2>&1
    then
        tail -n 30 "$VENV/install.log" >&2
        echo "installing failed; the whole log is $VENV/install.log" >&2
        exit 1
    fi
    touch "$VENV/.installed-${EXTRAS:-base}"
fi
