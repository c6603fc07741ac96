#!/usr/bin/env bash
# Builds vwire's container images locally with `docker build` (no registry
# is needed, nothing is pulled):
#
#   build.sh vwire      $VWIRE_IMAGE (default vwire:dev): the static vwire
#                       binary FROM scratch; every role, entrypoint vwire
#   build.sh etcd       vwire-etcd:VERSION: the static etcd that `make tools`
#                       builds, FROM scratch (the production compose domain)
#   build.sh coredns    vwire-coredns:VERSION: likewise CoreDNS (tests)
#   build.sh workload   vwire-workload:bookworm: a minimal Debian (from
#                       debootstrap) with ping, iperf3 and iproute2, for the
#                       example workloads and the tests
#
# An image that exists already is kept, except vwire's, which is rebuilt
# from the source every time (docker's cache makes an unchanged one cheap).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tools=${VWIRE_TOOLS_BIN:-$HOME/.cache/vwire/tools}

has() { docker image inspect "$1" >/dev/null 2>&1; }

# scratch_image TAG BINARY NAME: BINARY as /NAME on an empty image.
scratch_image() {
	local tag=$1 binary=$2 name=$3 ctx
	ctx=$(mktemp -d)
	trap 'rm -rf "$ctx"' RETURN
	cp "$binary" "$ctx/$name"
	printf 'FROM scratch\nCOPY %s /%s\nENTRYPOINT ["/%s"]\n' "$name" "$name" "$name" >"$ctx/Dockerfile"
	docker build -q -t "$tag" "$ctx" >/dev/null
	echo "built image $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}'))" >&2
}

# tool_image NAME: the cached static tool NAME, tagged with its version.
tool_image() {
	local name=$1 bin version
	"$root/e2e/tools/build.sh" "$name"
	bin=$(readlink -f "$tools/$name")
	version=$(basename "$bin" | sed -e "s/^$name-//" -e 's/-static$//')
	if ! has "vwire-$name:$version"; then
		scratch_image "vwire-$name:$version" "$bin" "$name"
	fi
	echo "vwire-$name:$version"
}

case "${1:-}" in
vwire)
	tag=${VWIRE_IMAGE:-vwire:dev}
	out=$(mktemp -d)
	trap 'rm -rf "$out"' EXIT
	(cd "$root" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$out/vwire" ./cmd/vwire)
	scratch_image "$tag" "$out/vwire" vwire
	echo "$tag"
	;;
etcd | coredns)
	tool_image "$1"
	;;
workload)
	tag=vwire-workload:bookworm
	if ! has "$tag"; then
		command -v debootstrap >/dev/null || { echo "build.sh workload needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
		rootfs=$(mktemp -d)
		trap 'rm -rf "$rootfs"' EXIT
		start=$SECONDS
		debootstrap --variant=minbase --include=iputils-ping,iperf3,iproute2 bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
		rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
		tar -C "$rootfs" -c . | docker import --change 'CMD ["sleep", "infinity"]' - "$tag" >/dev/null
		echo "built image $tag in $((SECONDS - start))s" >&2
	fi
	echo "$tag"
	;;
*)
	echo "usage: $0 vwire|etcd|coredns|workload" >&2
	exit 2
	;;
esac
