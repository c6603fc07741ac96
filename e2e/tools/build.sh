#!/usr/bin/env bash
# Builds the real components vwire's tests run (not vwire itself) from this
# separate module, once per version, into $VWIRE_TOOLS_BIN (default
# ~/.cache/vwire/tools). A fresh machine fills the cache on first use; later
# runs find the binaries and return at once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${VWIRE_TOOLS_BIN:-$HOME/.cache/vwire/tools}
mkdir -p "$bin"

# build NAME VERSION PACKAGE: bin/NAME-VERSION, linked as bin/NAME.
build() {
	local name=$1 version=$2 pkg=$3
	local out="$bin/$name-$version"
	if [ ! -x "$out" ]; then
		echo "building $name $version (once; cached in $bin)" >&2
		(cd "$here" && go build -o "$out.tmp" "$pkg")
		mv "$out.tmp" "$out"
	fi
	ln -sfn "$name-$version" "$bin/$name"
}

# version MODULE: the version this module's go.mod pins.
version() { (cd "$here" && go list -m -f '{{.Version}}' "$1"); }

build etcd "$(version go.etcd.io/etcd/server/v3)" go.etcd.io/etcd/server/v3
