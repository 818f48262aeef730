#!/usr/bin/env bash
# Play issue 13's attacks against protocol v1's browser client (see README.md here).
# Every test is expected to FAIL: each failure is an attack that worked on v1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(git -C "$here" rev-parse --show-toplevel)
v1=99cd9136b8cece9dfef5b00a484cc926f102b660  # main just before issue 13's first commit
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git -C "$root" archive "$v1" static/js tests/js/fake_server.mjs | tar -x -C "$work"
cp "$here/attacks_v1.test.mjs" "$work/tests/js/"
cd "$work"
node --test tests/js/attacks_v1.test.mjs
