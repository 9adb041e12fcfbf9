#!/usr/bin/env bash
# The main job, end to end on this machine: starts a local S3 server (moto) and the daemon,
# creates a repository, pushes it to s3://demo-bucket/demo-repo, clones it elsewhere, shows the
# files, and stops what it started.
set -euo pipefail
repo_root=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo_root"
# Only the S3 server it runs; scripts/test.sh installs the rest.
bash scripts/install-test-deps.sh moto
echo "== building git-remote-s3, git-lfs-s3, git-s3 and git-s3d (the first time: several minutes, most of the demo)"
cargo build --bins

work=$(mktemp -d /tmp/git-s3-demo.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cleanup() {
    git s3 daemon stop >/dev/null 2>&1 || true
    [ -n "${moto_pid:-}" ] && kill "$moto_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# A private world: own HOME, own daemon socket, only the local server.
export HOME="$work/home" XDG_RUNTIME_DIR="$work" GIT_CONFIG_NOSYSTEM=1
export PATH="$repo_root/target/debug:$PATH"
export AWS_ENDPOINT_URL_S3="http://127.0.0.1:$port" AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_EC2_METADATA_DISABLED=true
mkdir -p "$HOME"
git config --global user.name "Demo User"
git config --global user.email demo@example.com
git config --global init.defaultBranch main

echo "== starting moto (local S3) on 127.0.0.1:$port"
"$repo_root/.tools/moto/bin/moto_server" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
python3 - "$port" <<'PY'
import sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}"
deadline = time.time() + 30
while True:
    try:
        urllib.request.urlopen(url, timeout=1)
        break
    except OSError:
        if time.time() > deadline:
            sys.exit("moto did not start; see its log")
        time.sleep(0.05)
urllib.request.urlopen(urllib.request.Request(f"{url}/demo-bucket", method="PUT"))
PY

echo "== creating a repository and pushing it to s3://demo-bucket/demo-repo"
git init -q "$work/project"
cd "$work/project"
printf '# Demo\n\nPushed to S3 by git-remote-s3.\n' > README.md
mkdir src && printf 'fn main() {\n    println!("hello from S3");\n}\n' > src/main.rs
git add . && git commit -qm "First commit"
git remote add origin s3://demo-bucket/demo-repo
git push origin main
git tag -a v1.0 -m "First release" && git push origin v1.0

echo "== the daemon"
git s3 daemon status

echo "== cloning it elsewhere"
git clone s3://demo-bucket/demo-repo "$work/clone"
cd "$work/clone"
git log --oneline --decorate
echo "== files in the clone"
find . -path ./.git -prune -o -type f -print | sort
cat src/main.rs
