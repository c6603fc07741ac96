package main

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vwire/vwire/e2e"
)

// `vwire registry` and `vwire proxy`, run apart on one etcd cluster, each
// serve their metrics at --metrics-listen: a service applied through the
// proxy is counted by both (they read the same etcd), the proxy's gRPC
// server counts the call, both time their etcd calls, and promtool finds
// nothing wrong with either. The registry's calls are traced; the proxy
// answers vwire status and vwire diagnose.
func TestSeparateRolesObservable(t *testing.T) {
	etcd := startEtcd(t)
	dir := t.TempDir()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	traces := e2e.ReceiveOTLP(t, lis)
	regMetrics, proxyMetrics, proxyAddr, regAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	startVwire(t, nil, "registry", "--name", "a.example", "--etcd-endpoints", etcd, "--listen", regAddr,
		"--data-dir", filepath.Join(dir, "registry"), "--metrics-listen", regMetrics, "--otlp-endpoint", lis.Addr().String())
	startVwire(t, nil, "proxy", "--name", "a.example", "--etcd-endpoints", etcd, "--listen", proxyAddr,
		"--data-dir", filepath.Join(dir, "proxy"), "--dataplane", "none", "--metrics-listen", proxyMetrics)
	svc := filepath.Join(dir, "svc.yaml")
	os.WriteFile(svc, []byte("apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: svc}\nspec: {payload: IP}\n"), 0o600)
	vwire(t, true, "apply", "-f", svc, "--registry", proxyAddr, "--credentials", filepath.Join(dir, "proxy", "admin"))

	for role, addr := range map[string]string{"registry": regMetrics, "proxy": proxyMetrics} {
		var m e2e.Metrics
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			// (The registry sees the service when its watch of etcd does.)
			if m = e2e.Scrape(t, addr); m.Value("vwire_registry_services") == 1 || time.Now().After(deadline) {
				break
			}
		}
		if n := m.Value("vwire_registry_services"); n != 1 {
			t.Errorf("%s: %v services, want 1", role, n)
		}
		if m.Value("vwire_registry_etcd_request_duration_seconds") < 1 {
			t.Errorf("%s: no etcd call timed", role)
		}
		if !m.Has("go_goroutines") || !m.Has("process_resident_memory_bytes") {
			t.Errorf("%s: no Go runtime or process metrics", role)
		}
		if role == "proxy" {
			if n := m.Value("grpc_server_handled_total", "grpc_method=Apply", "grpc_code=OK"); n != 1 {
				t.Errorf("proxy: %v Apply calls handled, want 1", n)
			}
			if !m.Has("vwire_proxy_refusals_total") || !m.Has("vwire_dns_lookups_total") {
				t.Error("proxy: no request or DNS metrics")
			}
		}
		t.Run("promtool "+role, func(t *testing.T) { m.Promtool(t) })
	}

	vwire(t, true, "get", "services", "--registry", regAddr, "--credentials", filepath.Join(dir, "registry", "admin"))
	if !traces.WaitFor(10*time.Second, func(spans []e2e.Span) bool {
		for _, s := range spans {
			if s.Service == "a.example" && s.Attrs["vwire.hop"] == "registry" && s.Name == "vwire.registry.v1.Registry/ListServices" {
				return true
			}
		}
		return false
	}) {
		t.Error("the registry's ListServices span did not arrive")
	}

	creds := filepath.Join(dir, "proxy", "admin")
	if out := vwire(t, true, "status", "--registry", proxyAddr, "--credentials", creds); !regexp.MustCompile(`(?m)^\S+\s+`+regexp.QuoteMeta(etcd)+`\s+leader$`).MatchString(out) ||
		!strings.Contains(out, "1 services") {
		t.Errorf("vwire status of the proxy does not show the etcd member leading, or the service:\n%s", out)
	}
	if out := vwire(t, false, "diagnose", "svc", "--registry", proxyAddr, "--credentials", creds); !strings.Contains(out, "ok   service") ||
		!strings.Contains(out, `FAIL endpoints  no endpoint of "svc" matches`) {
		t.Errorf("vwire diagnose svc on the proxy:\n%s", out)
	}
}
