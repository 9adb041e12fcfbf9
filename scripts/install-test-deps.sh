#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmarks need, skipping what is already there:
# git-lfs (Debian), moto's S3 server, the Python git-remote-s3 and its fork fduplex-git-remote-s3
# (each in its own venv under .tools/, ignored by git), and s3s-fs (cargo install).
#
# Usage: install-test-deps.sh [git-lfs|moto|python-tool|fduplex-tool|s3s-fs ...]   (default: all)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
tools="$repo/.tools"
mkdir -p "$tools"

say() { printf '%s\n' "install-test-deps: $*" >&2; }

wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(git-lfs moto python-tool fduplex-tool s3s-fs)
for name in "${wanted[@]}"; do
    case "$name" in
        git-lfs | moto | python-tool | fduplex-tool | s3s-fs) ;;
        *) say "unknown tool '$name' (known: git-lfs moto python-tool fduplex-tool s3s-fs)"; exit 2 ;;
    esac
done
wants() { [[ " ${wanted[*]} " == *" $1 "* ]]; }

if wants git-lfs && ! command -v git-lfs >/dev/null 2>&1; then
    say "installing git-lfs from apt"
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q git-lfs
fi

venv_package() { # venv-dir requirement executable
    local venv=$1 requirement=$2 exe=$3
    if [ -x "$venv/bin/$exe" ] && "$venv/bin/python" -m pip show -q "${requirement%%[[=]*}" >/dev/null 2>&1 \
        && "$venv/bin/python" -m pip freeze 2>/dev/null | grep -qi "^${requirement%%[[=]*}==${requirement##*==}\$"; then
        return
    fi
    say "installing $requirement into $venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$requirement"
}

if wants moto; then
    venv_package "$tools/moto" 'moto[server]==5.2.5' moto_server
fi
if wants python-tool; then
    venv_package "$tools/python-git-remote-s3" 'git-remote-s3==0.4.2' git-remote-s3
fi
if wants fduplex-tool; then
    # A fork (packs + a gitwal.json manifest) that installs the same program names; the formats
    # benchmark compares it.
    venv_package "$tools/fduplex-git-remote-s3" 'fduplex-git-remote-s3==0.6.1' git-remote-s3
fi

if wants s3s-fs && ! "$tools/bin/s3s-fs" --help >/dev/null 2>&1; then
    say "building s3s-fs 0.14.1 (a few minutes)"
    cargo install --quiet --root "$tools" s3s-fs@0.14.1 --locked --features binary
fi
say "ready: $tools"
