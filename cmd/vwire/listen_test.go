package main

import (
	"context"
	"net"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/vwire/vwire/federation"
)

// Every role started with one of its listen addresses already taken says
// which flag and why, and exits 1: no panic, no hang, nothing left running.
func TestListenerTaken(t *testing.T) {
	etcd := startEtcd(t)
	// A gateway's credentials, as `vwire ca issue` writes them.
	caDir, creds := filepath.Join(t.TempDir(), "ca"), filepath.Join(t.TempDir(), "gw")
	td := spiffeid.RequireTrustDomainFromString("a.example")
	ca, err := federation.OpenCA(caDir, td)
	if err != nil {
		t.Fatal(err)
	}
	gwID, _ := federation.GatewayID(td, "n1")
	if err := ca.WriteCredentials(creds, gwID, time.Hour); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		role, flag string
		args       []string
	}{
		{"domain", "--listen", nil},
		{"domain", "--bundle-listen", []string{"--listen", "127.0.0.1:0"}},
		{"domain", "--dns-listen", []string{"--listen", "127.0.0.1:0", "--advertise", "127.0.0.1:7001"}},
		{"domain", "--debug-listen", []string{"--listen", "127.0.0.1:0"}},
		{"proxy", "--listen", []string{"--etcd-endpoints", etcd}},
		{"proxy", "--bundle-listen", []string{"--etcd-endpoints", etcd, "--listen", "127.0.0.1:0"}},
		{"proxy", "--dns-listen", []string{"--etcd-endpoints", etcd, "--listen", "127.0.0.1:0", "--advertise", "127.0.0.1:7001"}},
		{"registry", "--listen", nil},
		{"gateway", "--listen", []string{"--credentials", creds, "--registry", "127.0.0.1:1"}},
		{"domain", "--metrics-listen", []string{"--listen", "127.0.0.1:0"}},
		{"proxy", "--metrics-listen", []string{"--etcd-endpoints", etcd, "--listen", "127.0.0.1:0"}},
		{"registry", "--metrics-listen", []string{"--listen", "127.0.0.1:0"}},
		{"gateway", "--metrics-listen", []string{"--credentials", creds, "--registry", "127.0.0.1:1", "--listen", "127.0.0.1:0"}},
	} {
		t.Run(c.role+c.flag, func(t *testing.T) {
			taken := takeAddr(t)
			args := append([]string{c.role}, c.args...)
			if c.role != "gateway" {
				args = append(args, "--name", "a.example", "--dataplane", "none")
				if c.role == "registry" {
					args = args[:len(args)-2]
				}
			}
			args = append(args, "--data-dir", filepath.Join(t.TempDir(), "data"), c.flag, taken)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, vwireBin, args...).CombinedOutput()
			if ctx.Err() != nil {
				t.Fatalf("vwire %s did not exit within 60 s with %s taken:\n%s", strings.Join(args, " "), c.flag, out)
			}
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 1 {
				t.Errorf("vwire %s: %v, want exit status 1", strings.Join(args, " "), err)
			}
			s := string(out)
			if strings.Contains(s, "panic") || strings.Contains(s, "goroutine ") {
				t.Fatalf("vwire %s panicked:\n%s", strings.Join(args, " "), s)
			}
			if !strings.Contains(s, "Error: "+c.flag+": ") || !strings.Contains(s, "address already in use") {
				t.Errorf("vwire %s printed:\n%s\nwant \"Error: %s: … address already in use\"", strings.Join(args, " "), s, c.flag)
			}
		})
	}
}

// takeAddr holds a loopback TCP and UDP port until the test ends.
func takeAddr(t *testing.T) string {
	t.Helper()
	addr := freeAddr(t)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); pc.Close() })
	return addr
}

// startEtcd runs a one-member etcd in the test process for roles that need
// an external one, and returns its client URL.
func startEtcd(t *testing.T) string {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Dir = filepath.Join(t.TempDir(), "etcd")
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	client, peer := url.URL{Scheme: "http", Host: freeAddr(t)}, url.URL{Scheme: "http", Host: freeAddr(t)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("etcd not ready within 30 s")
	}
	return client.String()
}
