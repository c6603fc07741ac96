#!/usr/bin/env bash
# Builds vwire's container images locally with `docker build` (no registry
# is needed, nothing is pulled):
#
#   build.sh vwire      $VWIRE_IMAGE (default vwire:dev): the static vwire
#                       binary FROM scratch; every role, entrypoint vwire
#   build.sh etcd       $VWIRE_ETCD_IMAGE (vwire-etcd:VERSION): the static
#                       etcd that `make tools` builds, FROM scratch (the
#                       production compose domain)
#   build.sh coredns    $VWIRE_COREDNS_IMAGE (vwire-coredns:VERSION):
#                       likewise CoreDNS (tests)
#   build.sh workload   $VWIRE_WORKLOAD_IMAGE (vwire-workload:bookworm): a
#                       minimal Debian (debootstrap) with ping, iperf3 and
#                       iproute2, for the example workloads and the tests;
#                       its root file system is cached as a tarball beside
#                       the tools, so a removed image comes back in seconds
#
# Each prints the tag it built. An image that exists already is kept,
# except vwire's, which is rebuilt from the source every time (docker's
# cache makes an unchanged one cheap).
set -euo pipefail
here=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
root=$(cd "$here/../.." && pwd)
tools=${VWIRE_TOOLS_BIN:-$HOME/.cache/vwire/tools}

has() { docker image inspect "$1" >/dev/null 2>&1; }

# scratch_image TAG BINARY NAME: BINARY as /NAME on an empty image.
scratch_image() {
	local tag=$1 binary=$2 name=$3 ctx
	local old
	old=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
	ctx=$(mktemp -d)
	cp "$binary" "$ctx/$name"
	printf 'FROM scratch\nCOPY %s /%s\nENTRYPOINT ["/%s"]\n' "$name" "$name" "$name" >"$ctx/Dockerfile"
	docker build -q -t "$tag" "$ctx" >/dev/null || { rm -rf "$ctx"; return 1; }
	rm -rf "$ctx"
	# The image it replaces, unless a container still uses it.
	if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$tag")" ]; then
		docker rmi "$old" >/dev/null 2>&1 || true
	fi
	echo "built image $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}'))" >&2
}

# tool_image NAME [TAG]: the cached static tool NAME, tagged TAG (default
# vwire-NAME:VERSION).
tool_image() {
	local name=$1 tag=${2:-} bin version
	"$root/e2e/tools/build.sh" "$name"
	bin=$(readlink -f "$tools/$name")
	version=$(basename "$bin" | sed -e "s/^$name-//" -e 's/-static$//')
	tag=${tag:-vwire-$name:$version}
	if ! has "$tag"; then
		scratch_image "$tag" "$bin" "$name"
	fi
	echo "$tag"
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
etcd)
	tool_image etcd "${VWIRE_ETCD_IMAGE:-}"
	;;
coredns)
	tool_image coredns "${VWIRE_COREDNS_IMAGE:-}"
	;;
workload)
	tag=${VWIRE_WORKLOAD_IMAGE:-vwire-workload:bookworm}
	cache="$tools/workload-bookworm-rootfs.tar"
	if ! has "$tag"; then
		start=$SECONDS
		if [ ! -f "$cache" ]; then
			command -v debootstrap >/dev/null || { echo "build.sh workload needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
			rootfs=$(mktemp -d)
			trap 'rm -rf "$rootfs"' EXIT
			debootstrap --variant=minbase --include=iputils-ping,iperf3,iproute2,procps bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
			rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
			mkdir -p "$tools"
			tar -C "$rootfs" -cf "$cache.tmp" . && mv "$cache.tmp" "$cache"
		fi
		docker import --change 'CMD ["sleep", "infinity"]' "$cache" "$tag" >/dev/null
		echo "built image $tag in $((SECONDS - start))s" >&2
	fi
	echo "$tag"
	;;
*)
	echo "usage: $0 vwire|etcd|coredns|workload" >&2
	exit 2
	;;
esac
