#!/usr/bin/env bash
# Runs a score_jax command inside the project's virtual environment, creating it on first use.
#   bash run.sh tests                 run the test suite
#   bash run.sh main.py [flags...]    run python main.py with the given flags
#   bash run.sh bench/<name>.py       any other python script
set -euo pipefail
cd "$(dirname "$0")"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # bench/ scripts import score_jax from the root
VENV="${SCORE_JAX_VENV:-.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp="$VENV/.requirements.sha"
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[run.sh] installing requirements into $VENV (first run only, ~1 minute)" >&2
  "$PY" -m venv "$VENV"
  log="$VENV/pip-install.log"
  if ! { "$VENV/bin/python" -m pip install --upgrade pip &&
         "$VENV/bin/python" -m pip install -r requirements.txt; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "[run.sh] pip install failed; full log in $log" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
fi
if [ "${1:-}" = "tests" ]; then
  shift
  # Two workers: the suite is mostly single-threaded XLA compilation, so 2 cores halve its time.
  # Work units are test modules or shared-build groups, started slowest first (tests/conftest.py;
  # xdist would otherwise start the units with the most tests first). The 15 slowest tests are
  # listed at the end, to keep an eye on the suite's time.
  exec "$VENV/bin/python" -m pytest -q -n "${SCORE_JAX_TEST_WORKERS:-2}" --dist loadgroup \
    --no-loadscope-reorder --durations=15 tests "$@"
fi
exec "$VENV/bin/python" "$@"
