#!/usr/bin/env bash
# Builds the real components vwire's tests run (not vwire itself), each from
# its own small module under e2e/tools (so their dependencies never mix with
# vwire's or each other's), once per version, into $VWIRE_TOOLS_BIN (default
# ~/.cache/vwire/tools). A fresh machine fills the cache on first use; later
# runs find the binaries and return at once.
#
#   build.sh            every tool
#   build.sh etcd ...   only those named
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${VWIRE_TOOLS_BIN:-$HOME/.cache/vwire/tools}
mkdir -p "$bin"

# build NAME DIR MODULE PACKAGE: $bin/NAME-VERSION, linked as $bin/NAME,
# where VERSION is what DIR/go.mod pins for MODULE.
build() {
	local name=$1 dir=$here/$2 module=$3 pkg=$4
	local version
	version=$(cd "$dir" && go list -m -f '{{.Version}}' "$module")
	local out="$bin/$name-$version"
	if [ ! -x "$out" ]; then
		echo "building $name $version (once; cached in $bin)" >&2
		local start=$SECONDS
		(cd "$dir" && go build -o "$out.tmp" "$pkg")
		mv "$out.tmp" "$out"
		echo "built $name $version in $((SECONDS - start))s" >&2
	fi
	ln -sfn "$name-$version" "$bin/$name"
}

tools=("$@")
want_tool() { [ ${#tools[@]} -eq 0 ] || [[ " ${tools[*]} " == *" $1 "* ]]; }

want_tool etcd && build etcd etcd go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3
# SPIRE: ~15 min and ~3.6 GB the first time (cgo, sqlite3).
want_tool spire-server && build spire-server spire github.com/spiffe/spire github.com/spiffe/spire/cmd/spire-server
want_tool spire-agent && build spire-agent spire github.com/spiffe/spire github.com/spiffe/spire/cmd/spire-agent
# CoreDNS: ~6 min the first time; its etcd plugin serves what vwire publishes.
want_tool coredns && build coredns coredns github.com/coredns/coredns github.com/coredns/coredns
exit 0
