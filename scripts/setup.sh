#!/usr/bin/env bash
# Idempotent set-up shared by the quick-start commands: a virtual environment in .venv/, this
# package with its test dependencies, and the Fashion-MNIST files from Debian's package.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# Reinstall only when the dependency list changed.
extras="test,plot,nir,docs,events,tensorboard"
stamp=".venv/.installed-$( (cat pyproject.toml; echo "$extras") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "installing implicit-snn and its dependencies into .venv/ (first run: a few minutes)" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$extras]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi

data=/usr/share/datasets/fashion-mnist
if [ ! -f "$data/train-images-idx3-ubyte.gz" ] && command -v apt-get >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; fi
    fi
    if [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; then
        echo "installing Debian's dataset-fashion-mnist into $data" >&2
        { $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist; } >/dev/null \
            || echo "warning: could not install dataset-fashion-mnist; pass --data-root to a folder with the IDX files" >&2
    else
        echo "note: Fashion-MNIST not found in $data; run 'sudo apt-get install dataset-fashion-mnist' or pass --data-root" >&2
    fi
fi
