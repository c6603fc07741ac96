package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/federation"
)

var vwireBin string

// TestMain builds the real binary once; the tests run it as a user would.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vwire-bin")
	if err != nil {
		panic(err)
	}
	vwireBin = filepath.Join(dir, "vwire")
	if out, err := exec.Command("go", "build", "-o", vwireBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building vwire: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func freeAddr(t testing.TB) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(e2e.FreePort(t)))
}

// startVwire runs `vwire args...` until the test ends and returns its
// ready line.
func startVwire(t testing.TB, env []string, args ...string) string {
	t.Helper()
	return e2e.StartVwire(t, vwireBin, env, args...).Ready
}

// vwire runs a client command and returns its output; it fails the test if
// the command's success differs from wantOK.
func vwire(t *testing.T, wantOK bool, args ...string) string {
	t.Helper()
	out, err := exec.Command(vwireBin, args...).CombinedOutput()
	if (err == nil) != wantOK {
		t.Fatalf("vwire %s: err=%v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The foundation issue's "done when", through the real binary.
func TestDomainApplyGetSelect(t *testing.T) {
	dataDir, addr := filepath.Join(t.TempDir(), "data-a"), freeAddr(t)
	startVwire(t, nil, "domain", "--name", "a.example", "--data-dir", dataDir, "--listen", addr)
	c := []string{"--registry", addr, "--credentials", filepath.Join(dataDir, "admin")}

	out := vwire(t, true, append([]string{"apply", "-f", "../../registry/testdata/secure-intranet-connectivity.yaml"}, c...)...)
	if out != "networkservice/secure-intranet-connectivity applied\n" {
		t.Errorf("apply printed %q", out)
	}
	vwire(t, true, append([]string{"apply", "-f", "../../registry/testdata/endpoints.yaml"}, c...)...)

	firewall := vwire(t, true, append([]string{"get", "endpoints", "--service", "secure-intranet-connectivity", "--source-labels", "app=firewall"}, c...)...)
	if !strings.Contains(firewall, "vpn-gateway-1") || strings.Contains(firewall, "firewall-1") {
		t.Errorf("a firewall client selects:\n%s", firewall)
	}
	other := vwire(t, true, append([]string{"get", "endpoints", "--service", "secure-intranet-connectivity", "--source-labels", "app=web"}, c...)...)
	if !strings.Contains(other, "firewall-1") || strings.Contains(other, "vpn-gateway-1") {
		t.Errorf("any other client selects:\n%s", other)
	}

	// Network Service Mesh's manifests apply as they are and select as
	// there: a filter client is sent on to the shaper, any other to a
	// filter on its own node ({{.nodeName}}).
	vwire(t, true, append([]string{"apply", "-f", "../../registry/testdata/nsm-manifests.yaml"}, c...)...)
	if out := vwire(t, true, append([]string{"get", "endpoints", "--service", "chain", "--source-labels", "app=filter"}, c...)...); !strings.Contains(out, "shaper-1") || strings.Contains(out, "filter-node") {
		t.Errorf("a filter client of chain selects:\n%s", out)
	}
	if out := vwire(t, true, append([]string{"get", "endpoints", "--service", "chain", "--source-labels", "nodeName=node-2"}, c...)...); !strings.Contains(out, "filter-node-2") || strings.Contains(out, "filter-node-1") {
		t.Errorf("a client on node-2 selects:\n%s", out)
	}

	// -o yaml applies again; -o json is an object.
	y := vwire(t, true, append([]string{"get", "services", "-o", "yaml"}, c...)...)
	cmd := exec.Command(vwireBin, append([]string{"apply", "-f", "-"}, c...)...)
	cmd.Stdin = strings.NewReader(y)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("re-applying get -o yaml: %v\n%s", err, out)
	}
	if j := vwire(t, true, append([]string{"get", "endpoint", "firewall-1", "-o", "json"}, c...)...); !strings.Contains(j, `"kind": "NetworkServiceEndpoint"`) {
		t.Errorf("json: %s", j)
	}

	// A bad manifest names its document and field, and stores nothing.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: new-svc}\nspec: {payload: IP}\n---\napiVersion: networkservicemesh.io/v1\nkind: NetworkService\nmetadata: {name: other}\nspec: {payload: QUIC}\n"), 0o644)
	if out := vwire(t, false, append([]string{"apply", "-f", bad}, c...)...); !strings.Contains(out, `document 2 (NetworkService "other"): spec.payload: unknown payload "QUIC"`) {
		t.Errorf("bad manifest: %s", out)
	}
	if out := vwire(t, false, append([]string{"get", "service", "new-svc"}, c...)...); !strings.Contains(out, "NotFound") {
		t.Errorf("part of a refused apply was stored: %s", out)
	}

	if out := vwire(t, true, append([]string{"delete", "endpoint", "firewall-1"}, c...)...); out != "endpoint/firewall-1 deleted\n" {
		t.Errorf("delete printed %q", out)
	}
	if out := vwire(t, false, append([]string{"get", "endpoint", "firewall-1"}, c...)...); !strings.Contains(out, `NotFound: endpoint "firewall-1" is not registered`) {
		t.Errorf("after delete: %s", out)
	}
}

// Settings come from flags, then VWIRE_<FLAG>, then the --config file.
func TestSettingsPrecedence(t *testing.T) {
	dir := t.TempDir()
	fileAddr, envAddr := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "a.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf("name: a.example\nlisten: %s\ndata-dir: %s\nendpoint-lifetime: 30s\n", fileAddr, filepath.Join(dir, "data"))), 0o644)

	line := startVwire(t, []string{"VWIRE_CONFIG=" + cfg}, "domain")
	if !strings.Contains(line, fileAddr) {
		t.Errorf("config file ignored: %s", line)
	}
	line = startVwire(t, []string{"VWIRE_LISTEN=" + envAddr, "VWIRE_DATA_DIR=" + filepath.Join(dir, "data2")}, "domain", "--config", cfg)
	if !strings.Contains(line, envAddr) {
		t.Errorf("environment did not win over the file: %s", line)
	}
	flagAddr := freeAddr(t)
	line = startVwire(t, []string{"VWIRE_LISTEN=" + envAddr}, "domain", "--config", cfg, "--listen", flagAddr, "--data-dir", filepath.Join(dir, "data3"))
	if !strings.Contains(line, flagAddr) {
		t.Errorf("flag did not win over the environment: %s", line)
	}
}

// Bad settings are refused with the field named.
func TestBadSettings(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "bad.yaml")
	os.WriteFile(cfg, []byte("name: a.example\nlisen: 127.0.0.1:1\n"), 0o644)
	for _, c := range []struct {
		env  []string
		args []string
		want string
	}{
		{nil, []string{"domain", "--data-dir", dir}, "--name: the domain name is required"},
		{nil, []string{"domain", "--name", "A_b"}, `--name: domain "A_b"`},
		{nil, []string{"domain", "--config", cfg}, "unknown setting(s) lisen"},
		{[]string{"VWIRE_ENDPOINT_LIFETIME=soon"}, []string{"domain", "--name", "a.example"}, `VWIRE_ENDPOINT_LIFETIME="soon"`},
		{nil, []string{"domain", "--name", "a.example", "--listen", "nowhere"}, `--listen "nowhere"`},
		{nil, []string{"domain", "--name", "a.example", "--etcd-endpoints", "localhost:2379"}, `is not an http:// or https:// URL`},
		{nil, []string{"proxy", "--name", "a.example"}, "--etcd-endpoints is required"},
		{nil, []string{"domain", "--name", "a.example", "--bundle-listen", "127.0.0.1:0", "--spiffe-socket", filepath.Join(dir, "agent.sock")},
			"--bundle-listen and --spiffe-socket exclude each other"},
		{nil, []string{"domain", "--name", "a.example", "--peer", "c.example;bundle-endpoint=http://127.0.0.1:1;bundle=" + cfg},
			`the scheme must be https, not "http"`},
		{nil, []string{"proxy", "--name", "a.example", "--etcd-endpoints", "http://127.0.0.1:1", "--ca-secret", "vwire-ca"}, "--kubeconfig, --kube-namespace, --ca-secret, --attest-listen, --webhook-listen and --webhook-ca-secret go with --kubernetes"},
		{nil, []string{"domain", "--name", "a.example", "--kubernetes", "--kubeconfig", filepath.Join(dir, "none")}, "--kubernetes: stat " + filepath.Join(dir, "none")},
		{nil, []string{"domain", "--name", "a.example", "--tunnel-grace", "-1s"}, "--tunnel-grace -1s: not negative"},
		{nil, []string{"gateway", "--registry", "127.0.0.1:1", "--credentials", dir, "--tunnel-grace", "-1s"}, "--tunnel-grace -1s: not negative"},
		{nil, []string{"domain", "--name", "a.example", "--metrics-listen", "nowhere"}, `--metrics-listen "nowhere": address nowhere: missing port`},
		{nil, []string{"gateway", "--registry", "127.0.0.1:1", "--credentials", dir, "--metrics-listen", "nowhere"}, `--metrics-listen "nowhere": address nowhere: missing port`},
		{nil, []string{"domain", "--name", "a.example", "--otlp-endpoint", "nowhere"}, `--otlp-endpoint "nowhere": want host:port, or an http:// or https:// URL`},
		{nil, []string{"connect", "svc", "--otlp-endpoint", "https://"}, `--otlp-endpoint "https://": no host`},
		{nil, []string{"proxy", "--name", "a.example", "--etcd-endpoints", "http://127.0.0.1:1", "--kubernetes", "--kubeconfig", filepath.Join(dir, "none"), "--ca-secret", "x",
			"--webhook-listen", "127.0.0.1:0", "--webhook-host", "a.b.svc", "--sidecar-image", "vwire:dev", "--sidecar-otlp-endpoint", "collector"}, `--sidecar-otlp-endpoint "collector": want host:port`},
		{nil, []string{"get", "pods"}, `unknown resource "pods" (want services, endpoints or connections)`},
		{nil, []string{"get", "endpoints", "--source-labels", "app=x"}, "--source-labels needs --service"},
		{nil, []string{"get", "services", "--credentials", filepath.Join(dir, "none")}, "credentials " + filepath.Join(dir, "none")},
	} {
		cmd := exec.Command(vwireBin, c.args...)
		cmd.Env = append(os.Environ(), c.env...)
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("vwire %v: err=%v, output:\n%s\nwant %q", c.args, err, out, c.want)
		}
	}
}

// vwire domain answers the gRPC health service once ready, and stops
// cleanly (exit 0, data kept) on SIGTERM.
func TestDomainHealthAndSIGTERM(t *testing.T) {
	dataDir, addr := filepath.Join(t.TempDir(), "d"), freeAddr(t)
	cmd := exec.Command(vwireBin, "domain", "--name", "a.example", "--data-dir", dataDir, "--listen", addr)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(out)
	for sc.Scan() && !strings.Contains(sc.Text(), " ready in ") {
	}
	go func() {
		for sc.Scan() {
		}
	}()
	admin, err := federation.LoadCredentials(filepath.Join(dataDir, "admin"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := federation.DialDomain(addr, admin)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v, %v", resp, err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("vwire domain did not stop within 15 s of SIGTERM")
	}
	if _, err := os.Stat(filepath.Join(dataDir, "etcd")); err != nil {
		t.Errorf("the data directory did not survive: %v", err)
	}
}
