package registry_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

// domain is a registry started the way `vwire domain` starts it: embedded
// etcd and the built-in CA in a temporary data directory, on a kernel-chosen
// loopback port.
type domain struct {
	t       testing.TB
	name    string
	dataDir string
	reg     *registry.Registry
	ca      *federation.CA
	logs    *e2e.Buffer
}

func startDomain(t testing.TB, name string, opts ...func(*registry.Config)) *domain {
	t.Helper()
	d := &domain{t: t, name: name, dataDir: t.TempDir(), logs: &e2e.Buffer{}}
	d.start(opts...)
	return d
}

func (d *domain) start(opts ...func(*registry.Config)) {
	d.t.Helper()
	cfg := registry.NewConfig()
	cfg.Name = d.name
	cfg.DataDir = d.dataDir
	cfg.Listen = "127.0.0.1:0"
	cfg.Logger = slog.New(slog.NewTextHandler(d.logs, nil))
	for _, o := range opts {
		o(cfg)
	}
	reg, err := registry.Start(context.Background(), cfg)
	if err != nil {
		d.t.Fatalf("start registry: %v", err)
	}
	d.reg = reg
	d.t.Cleanup(func() { d.stop() })
	ca, err := federation.OpenCA(filepath.Join(d.dataDir, "ca"), spiffeid.RequireTrustDomainFromString(d.name))
	if err != nil {
		d.t.Fatal(err)
	}
	d.ca = ca
}

func (d *domain) stop() {
	if d.reg != nil {
		d.reg.Close()
		d.reg = nil
	}
}

// client connects to the registry as the workload with SPIFFE ID path.
func (d *domain) client(path string) registrypb.RegistryClient {
	d.t.Helper()
	id := spiffeid.RequireFromPath(d.ca.TrustDomain(), path)
	src, err := d.ca.NewSource(id, time.Hour, nil, slog.Default())
	if err != nil {
		d.t.Fatal(err)
	}
	c, conn, err := registry.Dial(d.reg.Addr().String(), src)
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { conn.Close(); src.Close() })
	return c
}

// admin connects with the credentials the domain wrote for the CLI.
func (d *domain) admin() registrypb.RegistryClient {
	d.t.Helper()
	return dialCredentials(d.t, d.reg.Addr().String(), filepath.Join(d.dataDir, "admin"))
}

// dialCredentials connects to addr as Dial does, with the SVID of a
// credentials directory.
func dialCredentials(t testing.TB, addr, dir string) registrypb.RegistryClient {
	t.Helper()
	src, err := federation.LoadCredentials(dir)
	if err != nil {
		t.Fatal(err)
	}
	c, conn, err := registry.Dial(addr, src)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return c
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func names(eps []*registrypb.Endpoint) []string {
	out := []string{}
	for _, e := range eps {
		out = append(out, e.GetName())
	}
	return out
}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
