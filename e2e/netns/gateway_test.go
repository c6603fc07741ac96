package netns

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/gateway/kernel"
	"github.com/vwire/vwire/proxy/proxypb"
)

// A node of b runs its own `vwire gateway` (credentials from `vwire ca
// issue`): an endpoint behind it serves a client in a, the proxy of b
// programs b2's end over mTLS, the path names b2's gateway, traffic keeps
// flowing while b's domain (its proxy) is down, b2's gateway heals after a
// SIGKILL, and closing leaves b2 as it was.
func TestSeparateGateway(t *testing.T) {
	e2e.RequireRoot(t, "ping")
	w := newWorld(t, vwireBin, "a.example", "b.example")
	os.WriteFile(filepath.Join(w.dir, "svc.yaml"), []byte(ipService), 0o600)
	w.cli("b.example", "apply", "-f", filepath.Join(w.dir, "svc.yaml"))
	b2 := w.gatewayNode("b.example", "b2", "10.99.0.12")
	before, beforeLinks := fullSnapshot(t, b2.ns), snapshot(t, b2.ns)
	epNS := w.workload("e2")
	e2e.StartVwire(t, "ip", nil, "netns", "exec", b2.ns, w.bin, "endpoint", "--name", "ep-b2", "--service", "svc",
		"--cidr", "172.16.9.0/24", "--netns", epNS, "--gateway", "unix://"+filepath.Join(b2.data, "gateway.sock"))

	clientNS := w.workload("c")
	c := w.connect("a.example", "svc@b.example", clientNS, "--probe-interval", "100ms")
	if c.Up.Connection.Endpoint != "ep-b2@b.example" {
		t.Fatalf("connected to %q, want ep-b2@b.example", c.Up.Connection.Endpoint)
	}
	if err := ping(clientNS, c.Up.peer()); err != nil {
		t.Fatal(err)
	}
	if err := ping(epNS, c.Up.self()); err != nil {
		t.Error(err)
	}
	if out := run(t, "ip", "-n", b2.ns, "-o", "link", "show"); !strings.Contains(out, "wg") {
		t.Errorf("b2 has no WireGuard device for the vWire:\n%s", out)
	}

	t.Run("b2's gateway admits b's proxy only", func(t *testing.T) {
		src, err := federation.LoadCredentials(filepath.Join(w.domains["b.example"].data, "admin"))
		if err != nil {
			t.Fatal(err)
		}
		gw := spiffeid.RequireFromString("spiffe://b.example/vwire/gateway/b2")
		conn, err := grpc.NewClient(b2.addr+":7003", grpc.WithTransportCredentials(federation.ClientCredentials(src, federation.AuthorizeOf(gw))),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (c net.Conn, err error) {
				err = kernel.Do(b2.ns, func() (err error) { c, err = (&net.Dialer{}).DialContext(ctx, "tcp", addr); return err })
				return c, err
			}))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err = proxypb.NewGatewayClient(conn).Remove(ctx, &proxypb.GatewayRequest{Side: "client", Connection: c.Up.proto()})
		if err == nil {
			t.Fatal("b's admin removed a vWire end through b2's gateway")
		}
		t.Logf("b's admin calling b2's gateway: %v", err)
		// The client sees a TLS alert or, when the gateway closed first, a
		// reset; the gateway says why it refused.
		if l := b2.proc.WaitFor(5*time.Second, "refused a TLS connection", "spiffe://b.example/vwire/admin"); l == "" {
			t.Errorf("b2's gateway did not log refusing b's admin for its identity (the client saw %v)", err)
		}
		if err := ping(clientNS, c.Up.peer()); err != nil {
			t.Errorf("after the refused call: %v", err)
		}
	})

	// A client on b's own host and the endpoint behind b2: two gateways of
	// one domain, joined by VXLAN (--intra-domain-tunnel's default).
	t.Run("within b over VXLAN", func(t *testing.T) {
		ns := w.workload("cb")
		in := w.connect("b.example", "svc", ns)
		defer in.stop()
		if in.Up.Connection.Mechanism["vxlan"] == nil || in.Up.Connection.MTU != 1450 {
			t.Errorf("mechanism %v, MTU %d: want vxlan, 1450", in.Up.Connection.Mechanism, in.Up.Connection.MTU)
		}
		if err := ping(ns, in.Up.peer()); err != nil {
			t.Error(err)
		}
		if err := ping(epNS, in.Up.self()); err != nil {
			t.Error(err)
		}
	})

	t.Run("the data path does not need b's proxy", func(t *testing.T) {
		b := w.domains["b.example"]
		b.proc.Signal(syscall.SIGKILL)
		if err := ping(clientNS, c.Up.peer()); err != nil {
			t.Errorf("with b's domain down: %v", err)
		}
		w.start(b)
		if err := ping(clientNS, c.Up.peer()); err != nil {
			t.Errorf("after b's domain restarted: %v", err)
		}
		// a's connection to b failed while b was down; a new request right
		// after b is back must not fail with that old error.
		again := w.connect("a.example", "svc@b.example", w.workload("c2"))
		again.stop()
	})

	// (Not a subtest: the restarted gateway must outlive it.)
	killed := time.Now()
	b2.proc.Signal(syscall.SIGKILL)
	b2.proc = e2e.StartVwire(t, "ip", nil, b2.args...)
	restarted := time.Since(killed)
	for deadline := time.Now().Add(30 * time.Second); ping(clientNS, c.Up.peer()) != nil; {
		if time.Now().After(deadline) {
			t.Fatal("no ping through the vWire 30 s after b2's gateway restarted")
		}
	}
	select {
	case ev := <-c.events: // a heal the client saw (it may have missed no probe at all)
		t.Logf("after SIGKILL of b2's gateway: %s, gap %d ms (restart to ready %v)", ev.Event, ev.GapMS, restarted.Round(time.Millisecond))
	default:
		t.Logf("after SIGKILL of b2's gateway the client missed no probe (restart to ready %v)", restarted.Round(time.Millisecond))
	}

	t.Run("closing leaves nothing on b2", func(t *testing.T) {
		c.stop()
		if got := settled(t, b2.ns, beforeLinks); got != beforeLinks {
			t.Errorf("b2 after close and the tunnel's grace:\n%s\nbefore:\n%s", got, beforeLinks)
		}
		if out := run(t, "ip", "-n", epNS, "-o", "link", "show"); strings.Contains(out, "nsm") {
			t.Errorf("the endpoint's interface is still there:\n%s", out)
		}
		b2.proc.Signal(syscall.SIGTERM) // and the gateway its MSS table
		if got := fullSnapshot(t, b2.ns); got != before {
			t.Errorf("b2 after its gateway stopped:\n%s\nbefore:\n%s", got, before)
		}
	})
}
