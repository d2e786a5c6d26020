#!/bin/sh
# Builds the demo packages in examples/packages/ into a repository and
# indexes it:  examples/build-repo.sh [OUT_DIR]   (default examples/repo)
# Then serve it:  theseus repo serve OUT_DIR --listen 127.0.0.1:8080
# THESEUS names the binary (default: target/debug/theseus, else theseus on PATH).
# SIGN_KEY names a secret key from `theseus repo keygen --out FILE`: the index
# is then signed (agents refuse an unsigned one unless --allow-unsigned), and
# EXPIRES_IN (e.g. 7d) makes it expire.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/repo}
theseus=${THESEUS:-$here/../target/debug/theseus}
[ -x "$theseus" ] || theseus=theseus
mkdir -p "$out/packages"
for dir in "$here"/packages/*/; do
	"$theseus" pkg build "$dir" -o "$out/packages" >/dev/null
done
set --
[ -n "${SIGN_KEY:-}" ] && set -- "$@" --sign-key "$SIGN_KEY"
[ -n "${EXPIRES_IN:-}" ] && set -- "$@" --expires-in "$EXPIRES_IN"
"$theseus" repo index "$out" "$@"
