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

# build NAME DIR MODULE PACKAGE [static [LDFLAGS]]: $bin/NAME-VERSION,
# linked as $bin/NAME, where VERSION is what DIR/go.mod pins for MODULE.
# "static" builds without cgo (NAME-VERSION-static), for images FROM
# scratch.
build() {
	local name=$1 dir=$here/$2 module=$3 pkg=$4 static=${5:-} ldflags=${6:-}
	local version cgo=1 suffix=""
	version=$(cd "$dir" && go list -m -f '{{.Version}}' "$module")
	if [ "$static" = static ]; then cgo=0 suffix=-static; fi
	local out="$bin/$name-$version$suffix"
	if [ ! -x "$out" ]; then
		echo "building $name $version$suffix (once; cached in $bin)" >&2
		local start=$SECONDS
		(cd "$dir" && CGO_ENABLED=$cgo go build -trimpath -ldflags "${ldflags//VERSION/$version}" -o "$out.tmp" "$pkg")
		mv "$out.tmp" "$out"
		echo "built $name $version$suffix in $((SECONDS - start))s" >&2
	fi
	ln -sfn "$name-$version$suffix" "$bin/$name"
}

tools=("$@")
want_tool() { [ ${#tools[@]} -eq 0 ] || [[ " ${tools[*]} " == *" $1 "* ]]; }

# etcd and CoreDNS are static: the compose tests run them in images FROM
# scratch.
want_tool etcd && build etcd etcd go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3 static
# SPIRE: ~15 min and ~3.6 GB the first time (cgo, sqlite3).
want_tool spire-server && build spire-server spire github.com/spiffe/spire github.com/spiffe/spire/cmd/spire-server
want_tool spire-agent && build spire-agent spire github.com/spiffe/spire github.com/spiffe/spire/cmd/spire-agent
# CoreDNS: ~6 min the first time; its etcd plugin serves what vwire publishes.
want_tool coredns && build coredns coredns github.com/coredns/coredns github.com/coredns/coredns static
# Kubernetes' API server and kubectl: the CRD, sync and webhook tests run
# a control plane without nodes (~3 min and ~2 GB the first time). Kubernetes
# reads its version from these variables.
k8sversion="-X k8s.io/component-base/version.gitVersion=VERSION -X k8s.io/client-go/pkg/version.gitVersion=VERSION -X k8s.io/component-base/version.gitTreeState=clean"
want_tool kube-apiserver && build kube-apiserver kubernetes k8s.io/kubernetes k8s.io/kubernetes/cmd/kube-apiserver static "$k8sversion"
want_tool kubectl && build kubectl kubernetes k8s.io/kubernetes k8s.io/kubernetes/cmd/kubectl static "$k8sversion"
# A kind node's Kubernetes (make e2e-kind): ~10 min the first time.
for b in kubeadm kubelet kube-controller-manager kube-scheduler kube-proxy; do
	want_tool "$b" && build "$b" kubernetes k8s.io/kubernetes "k8s.io/kubernetes/cmd/$b" static "$k8sversion"
done
want_tool kind && build kind kind sigs.k8s.io/kind sigs.k8s.io/kind static
# promtool: checks the roles' Prometheus metrics (~3 min the first time).
want_tool promtool && build promtool prometheus github.com/prometheus/prometheus github.com/prometheus/prometheus/cmd/promtool static
# helm: the chart's lint and rendering (~3.5 min the first time).
want_tool helm && build helm helm helm.sh/helm/v3 helm.sh/helm/v3/cmd/helm static "-X helm.sh/helm/v3/internal/version.version=VERSION"
exit 0
