#!/bin/sh
# Builds the demo packages in examples/packages/ into a repository and
# indexes it:  examples/build-repo.sh [OUT_DIR]   (default examples/repo)
# Then serve it:  theseus repo serve OUT_DIR --listen 127.0.0.1:8080
# THESEUS names the binary (default: target/debug/theseus, else theseus on PATH).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/repo}
theseus=${THESEUS:-$here/../target/debug/theseus}
[ -x "$theseus" ] || theseus=theseus
mkdir -p "$out/packages"
for dir in "$here"/packages/*/; do
	"$theseus" pkg build "$dir" -o "$out/packages" >/dev/null
done
"$theseus" repo index "$out"
