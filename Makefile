# vwire's make targets. `make test` is the test command the README promises.
SHELL := /bin/bash
GO ?= go
BIN ?= bin
# Binaries of real components the tests run (etcd), built once per version
# from e2e/tools and cached here.
VWIRE_TOOLS_BIN ?= $(HOME)/.cache/vwire/tools
export VWIRE_TOOLS_BIN

PROTOS := registry/registrypb/registry.proto proxy/proxypb/networkservice.proto proxy/proxypb/operator.proto federation/federationpb/federation.proto

.PHONY: all build run demo test test-short e2e-kind bench fuzz generate verify fix tools clean image images

all: build

build:
	$(GO) build -o $(BIN)/vwire ./cmd/vwire

# The main job on its embedded default: one domain, as the README shows.
run: build
	./$(BIN)/vwire domain --name a.example --data-dir ./data-a --listen 127.0.0.1:7001

# The main job: Marsha's four domains on this machine, as root (vwire demo).
demo: build
	./$(BIN)/vwire demo

# The test command: unit tests, embedded etcd, a real 3-member etcd cluster.
test: tools
	set -o pipefail; $(GO) test -json -count=1 -timeout 20m ./... | $(GO) run ./e2e/testsum

# Marsha's clusters end to end: two kind clusters (built without a
# registry, deploy/kind) and two compose domains, federated; pods get
# vWires by annotation. ~5 min once the node image is cached.
e2e-kind: tools
	set -o pipefail; VWIRE_E2E_KIND=1 $(GO) test -json -count=1 -timeout 40m ./e2e/kind/ | $(GO) run ./e2e/testsum

test-short:
	$(GO) test -short ./...

# The fuzz targets, FUZZTIME each (make test runs their seeds): the public
# edge's request handlers against a sandbox domain (FuzzPeerEdge), the
# manifest decoder and service names, and the gateway's cutting of the
# packets the kernel hands its Ethernet TUN and its joining of what a peer
# sends back. New inputs are minimized briefly:
# each run of FuzzPeerEdge is a real gRPC call.
FUZZTIME ?= 60s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzPeerEdge$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 5x ./e2e/sandbox/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeManifests$$' -fuzztime $(FUZZTIME) ./registry/
	$(GO) test -run '^$$' -fuzz '^FuzzParseName$$' -fuzztime $(FUZZTIME) ./registry/
	$(GO) test -run '^$$' -fuzz '^FuzzSegmenter$$' -fuzztime $(FUZZTIME) ./gateway/kernel/
	$(GO) test -run '^$$' -fuzz '^FuzzCoalesce$$' -fuzztime $(FUZZTIME) ./gateway/kernel/

# Benchmarks: one table (docs/benchmarks.md, raw output for benchstat in
# docs/benchmarks.txt). BENCH=quick is a short smoke run. It builds only the
# tools the benchmarks run (not SPIRE: 6 to 15 min on a fresh machine); the
# kind node image builds its Kubernetes itself.
bench:
	./e2e/tools/build.sh etcd coredns kind kubectl helm
	$(GO) run ./e2e/bench

# The vwire image, vwire:dev (VWIRE_IMAGE overrides): a static binary FROM
# scratch, built locally; every role.
image:
	./deploy/image/build.sh vwire

# Every image the compose deployments and their tests use: vwire, etcd
# (from the cached tool), and the example workload (Debian, debootstrap).
images: image
	./deploy/image/build.sh etcd
	./deploy/image/build.sh workload

# Real component binaries the tests run, cached by version (e2e/tools).
tools:
	./e2e/tools/build.sh

generate:
	PATH="$$(dirname $$($(GO) tool -n protoc-gen-go)):$$(dirname $$($(GO) tool -n protoc-gen-go-grpc)):$$PATH" \
	  protoc -I . -I /usr/include \
	    --go_out=. --go_opt=paths=source_relative \
	    --go-grpc_out=. --go-grpc_opt=paths=source_relative \
	    $(PROTOS)

# verify fails when formatting, vet, lint, generated code or go.mod are off.
verify:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) tool staticcheck ./...
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	  cp go.mod go.sum $$tmp/; $(GO) mod tidy; \
	  if ! diff -q go.mod $$tmp/go.mod >/dev/null || ! diff -q go.sum $$tmp/go.sum >/dev/null; then \
	    cp $$tmp/go.mod $$tmp/go.sum .; echo "go.mod/go.sum not tidy: run make fix"; exit 1; fi
	@$(MAKE) -s generate && if ! git diff --quiet -- '*.pb.go'; then \
	  git diff --stat -- '*.pb.go'; echo "generated code is stale: run make generate and commit"; exit 1; fi

fix:
	gofmt -w $$(git ls-files '*.go')
	$(GO) mod tidy
	$(MAKE) generate

clean:
	rm -rf $(BIN)
