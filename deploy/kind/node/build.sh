#!/usr/bin/env bash
# Builds vwire's kind node image without a registry: a Debian root file
# system (debootstrap) with systemd, containerd, runc and the CNI plugins,
# Kubernetes' binaries built from k8s.io/kubernetes (e2e/tools), and the
# control plane's images made from them, imported into the node's
# containerd. kind creates clusters from it as from its own node images.
#
#   build.sh        prints the image's tag ($VWIRE_KIND_NODE_IMAGE, default
#                   vwire-kind-node:KUBERNETES-VERSION)
#
# The image is saved beside the tools (~1.3 GB): a removed image comes
# back with docker load in seconds; a changed file of this directory makes
# a new one.
set -euo pipefail
export DOCKER_BUILDKIT=0 # the classic builder, without its deprecation notice
here=$(cd "$(dirname "$(readlink -f "$0")")" && pwd)
root=$(cd "$here/../../.." && pwd)
tools=${VWIRE_TOOLS_BIN:-$HOME/.cache/vwire/tools}

"$root/e2e/tools/build.sh" kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd coredns >&2
version=$(basename "$(readlink -f "$tools/kubeadm")" | sed -e 's/^kubeadm-//' -e 's/-static$//')
# What the image is made of: this directory and the binaries' versions.
stamp=$( (cd "$here" && find . -type f | sort | xargs sha256sum; ls -l "$tools"/*-static) | sha256sum | cut -c1-12)
tag=${VWIRE_KIND_NODE_IMAGE:-vwire-kind-node:$version}
cache="$tools/kind-node-$version-$stamp.tar"

has() { docker image inspect "$1" >/dev/null 2>&1; }
if has "$tag" && [ "$(docker image inspect -f '{{index .Config.Labels "vwire.stamp"}}' "$tag")" = "$stamp" ]; then
	echo "$tag"
	exit 0
fi
if [ -f "$cache" ]; then
	docker load -i "$cache" >/dev/null
	echo "$tag"
	exit 0
fi

start=$SECONDS
work=$(mktemp -d)
node=""
cleanup() {
	[ -n "$node" ] && docker rm -f "$node" >/dev/null 2>&1
	docker rmi "vwire-kind-base:$stamp" >/dev/null 2>&1 || true
	for i in "${images[@]:-}"; do [ -n "$i" ] && docker rmi "$i" >/dev/null 2>&1; done
	rm -rf "$work"
}
images=()
trap cleanup EXIT

# The Debian root file system, cached.
rootfs_cache="$tools/kind-node-rootfs-bookworm.tar"
if [ ! -f "$rootfs_cache" ]; then
	command -v debootstrap >/dev/null || { echo "build.sh needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
	echo "kind node: debootstrap (once; cached in $rootfs_cache)" >&2
	debootstrap --variant=minbase \
		--include=systemd,systemd-sysv,dbus,containerd,runc,containernetworking-plugins,iptables,nftables,kmod,ethtool,socat,conntrack,mount,util-linux,procps,iproute2,ca-certificates,iputils-ping \
		bookworm "$work/rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
	rm -rf "$work/rootfs"/var/cache/apt/archives/*.deb "$work/rootfs"/var/lib/apt/lists/*
	tar -C "$work/rootfs" -cf "$rootfs_cache.tmp" . && mv "$rootfs_cache.tmp" "$rootfs_cache"
	rm -rf "$work/rootfs"
fi
mkdir -p "$work/rootfs"
tar -C "$work/rootfs" -xf "$rootfs_cache"
r="$work/rootfs"
cp -a "$here/files/." "$r/"
mv "$r/entrypoint" "$r/usr/local/bin/entrypoint"
for b in kubeadm kubelet kubectl; do cp "$(readlink -f "$tools/$b")" "$r/usr/bin/$b"; done
mkdir -p "$r/opt/cni" "$r/kind"
ln -sfn /usr/lib/cni "$r/opt/cni/bin"
echo "$version" >"$r/kind/version"
# What systemd must not start in a container.
for unit in getty.target systemd-timesyncd.service systemd-resolved.service; do
	ln -sfn /dev/null "$r/etc/systemd/system/$unit"
done
ln -sfn /etc/systemd/system/kubelet.service "$r/etc/systemd/system/multi-user.target.wants/kubelet.service"
tar -C "$r" -c . | docker import \
	--change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
	--change 'ENV container=docker' \
	- "vwire-kind-base:$stamp" >/dev/null

# The control plane's images, as kubeadm names them.
scratch() { # scratch TAG BINARY NAME ENTRYPOINT-JSON
	local ctx="$work/img-$3"
	mkdir -p "$ctx"
	cp "$2" "$ctx/$3"
	printf 'FROM scratch\nCOPY %s /usr/local/bin/%s\nENTRYPOINT %s\n' "$3" "$3" "$4" >"$ctx/Dockerfile"
	docker build -q -t "$1" "$ctx" >/dev/null
	images+=("$1")
}
CGO_ENABLED=0 go build -C "$root" -trimpath -o "$work/pause" ./deploy/kind/pause
while read -r image; do
	name=${image##*/}
	name=${name%%:*}
	case "$name" in
	kube-apiserver | kube-controller-manager | kube-scheduler)
		scratch "$image" "$(readlink -f "$tools/$name")" "$name" "[\"/usr/local/bin/$name\"]" ;;
	etcd) scratch "$image" "$(readlink -f "$tools/etcd")" etcd '["/usr/local/bin/etcd"]' ;;
	coredns) scratch "$image" "$(readlink -f "$tools/coredns")" coredns '["/usr/local/bin/coredns"]' ;;
	pause) scratch "$image" "$work/pause" pause '["/usr/local/bin/pause"]' ;;
	kube-proxy)
		# kube-proxy runs iptables: the node's own file system.
		ctx="$work/img-kube-proxy"
		mkdir -p "$ctx"
		cp "$(readlink -f "$tools/kube-proxy")" "$ctx/kube-proxy"
		printf 'FROM vwire-kind-base:%s\nCOPY kube-proxy /usr/local/bin/kube-proxy\nENTRYPOINT ["/usr/local/bin/kube-proxy"]\n' "$stamp" >"$ctx/Dockerfile"
		docker build -q -t "$image" "$ctx" >/dev/null
		images+=("$image")
		;;
	*) echo "kubeadm wants $image, which this script does not make" >&2; exit 1 ;;
	esac
done < <("$tools/kubeadm" config images list --kubernetes-version "$version")

# Into the node's containerd (run on its own, without systemd), then the
# node image is the base with them.
node=vwire-kind-build-$stamp
docker run -d --name "$node" --entrypoint containerd "vwire-kind-base:$stamp" >/dev/null
for _ in $(seq 100); do
	docker exec "$node" ctr version >/dev/null 2>&1 && break
	sleep 0.2
done
docker save "${images[@]}" | docker exec -i "$node" ctr -n k8s.io images import --no-unpack - >/dev/null
docker stop "$node" >/dev/null
docker commit \
	--change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' \
	--change 'CMD []' \
	--change "LABEL vwire.stamp=$stamp" \
	"$node" "$tag" >/dev/null
echo "kind node: built $tag in $((SECONDS - start))s; saving it in $cache" >&2
rm -f "$tools"/kind-node-"$version"-*.tar
docker save "$tag" -o "$cache.tmp" && mv "$cache.tmp" "$cache"
echo "$tag"
