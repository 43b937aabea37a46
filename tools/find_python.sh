#!/usr/bin/env bash
# Prints the path of a Python >= 3.12 interpreter: PATH first, then pyenv's installed versions.
# (pyenv shims for a version that is not selected exist on PATH but fail when run, so every
# candidate is actually executed before it is accepted.)
set -u
ok() { "$1" -c 'import sys, venv; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }
for name in python3 python3.14 python3.13 python3.12 python; do
  p=$(command -v "$name" 2>/dev/null) || continue
  if ok "$p"; then echo "$p"; exit 0; fi
done
root=${PYENV_ROOT:-$HOME/.pyenv}
if command -v pyenv >/dev/null 2>&1; then root=$(pyenv root); fi
for p in $(ls -d "$root"/versions/3.*/bin/python3 2>/dev/null | sort -V -r); do
  if ok "$p"; then echo "$p"; exit 0; fi
done
echo "error: no Python >= 3.12 found on PATH or under pyenv ($root); install one (e.g. 'pyenv install 3.12')" >&2
exit 1
