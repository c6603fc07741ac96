package handover

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/vwire/vwire/e2e"
)

// namespace makes a throw-away network namespace (removed after) and opens
// it as a workload would its own.
func namespace(t *testing.T) (string, *os.File) {
	t.Helper()
	e2e.RequireRoot(t)
	b := make([]byte, 4)
	rand.Read(b)
	name := "vwh-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	f, err := os.Open("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return name, f
}

func sameNS(t *testing.T, a *os.File, path string) bool {
	t.Helper()
	var x, y unix.Stat_t
	if err := unix.Fstat(int(a.Fd()), &x); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(path, &y); err != nil {
		return false
	}
	return x.Dev == y.Dev && x.Ino == y.Ino
}

// serve runs a gRPC health server with creds on a unix socket and returns
// its path and what each call saw of its connection.
func serve(t *testing.T, creds func() grpc.ServerOption) (string, <-chan *Handed) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "s.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan *Handed, 4)
	srv := grpc.NewServer(creds(), grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		p, _ := peer.FromContext(ctx)
		info, _ := p.AuthInfo.(*Handed)
		seen <- info
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return path, seen
}

// check makes a call; its connection (and with it a handed namespace)
// stays open until the test ends.
func check(t *testing.T, path string, creds grpc.DialOption, opts ...grpc.CallOption) {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, creds)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, opts...); err != nil {
		t.Fatal(err)
	}
}

// A client hands its namespace to the server it dials (vwire connect to
// its gateway), or hands none; the server also learns the caller's uid.
func TestClientHandsNamespace(t *testing.T) {
	name, ns := namespace(t)
	path, seen := serve(t, func() grpc.ServerOption { return grpc.Creds(ReceiveNS()) })

	check(t, path, grpc.WithTransportCredentials(HandNS(ns)))
	got := <-seen
	if got == nil || got.NS == nil || !sameNS(t, got.NS, "/run/netns/"+name) {
		t.Fatalf("the server did not get the client's namespace: %+v", got)
	}
	if got.UID != int32(os.Getuid()) || got.PID != int32(os.Getpid()) {
		t.Errorf("caller uid %d pid %d, want %d %d", got.UID, got.PID, os.Getuid(), os.Getpid())
	}
	check(t, path, grpc.WithTransportCredentials(HandNS(nil)))
	if got := <-seen; got == nil || got.NS != nil {
		t.Errorf("a client handing nothing: %+v", got)
	}
}

// A server hands its namespace to the client that dials it (vwire
// endpoint to the gateway): the client sees it in the call's peer.
func TestServerHandsNamespace(t *testing.T) {
	name, ns := namespace(t)
	path, _ := serve(t, func() grpc.ServerOption { return grpc.Creds(HandNS(ns)) })
	var p peer.Peer
	check(t, path, grpc.WithTransportCredentials(ReceiveNS()), grpc.Peer(&p))
	got, _ := p.AuthInfo.(*Handed)
	if got == nil || got.NS == nil || !sameNS(t, got.NS, "/run/netns/"+name) {
		t.Fatalf("the client did not get the server's namespace: %+v", p.AuthInfo)
	}
}

// A peer that says no hello (an older vwire, or plain gRPC) is refused
// with a reason, not hung on.
func TestNoHello(t *testing.T) {
	path, _ := serve(t, func() grpc.ServerOption { return grpc.Creds(ReceiveNS()) })
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
	c.SetReadDeadline(time.Now().Add(2 * helloTimeout))
	if _, err := c.Read(make([]byte, 64)); err == nil {
		t.Error("the server answered a connection that said no hello")
	}
	if _, err := readHello(c.(*net.UnixConn)); err == nil {
		t.Error("reading a hello from a closed connection did not fail")
	}
}

// The gateway refuses its own namespace, the host's, and what is not a
// namespace at all; it takes a workload's.
func TestCheck(t *testing.T) {
	name, ns := namespace(t)
	if err := CheckHanded(ns); err != nil {
		t.Errorf("a workload's namespace: %v", err)
	}
	if err := CheckPath(name); err != nil {
		t.Errorf("a workload's namespace by name: %v", err)
	}
	own, err := OwnNamespace()
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	if err := CheckHanded(own); !errors.Is(err, ErrForeignNamespace) || !strings.Contains(err.Error(), "is the gateway's own network namespace") {
		t.Errorf("the gateway's own namespace, handed: %v", err)
	}
	// PID 1's (the host's, outside containers); a sandbox may not let even
	// root look at it, and that is a refusal too.
	if err := CheckPath("/proc/1/ns/net"); !errors.Is(err, ErrForeignNamespace) && (err == nil || !strings.Contains(err.Error(), "permission denied")) {
		t.Errorf("the host's namespace by path: %v", err)
	}
	if err := CheckPath("/proc/self/ns/net"); !errors.Is(err, ErrForeignNamespace) {
		t.Errorf("the gateway's own namespace by path: %v", err)
	}
	if err := CheckPath("vwh-no-such-namespace"); err == nil || !strings.Contains(err.Error(), "does not exist or cannot be opened") {
		t.Errorf("a missing namespace: %v", err)
	}
	file, err := os.Open("/etc/hostname")
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	if err := CheckHanded(file); !errors.Is(err, ErrForeignNamespace) || !strings.Contains(err.Error(), "not a network namespace") {
		t.Errorf("a file that is no namespace: %v", err)
	}
}

// A pin keeps the namespace at a path after the handed descriptor is
// closed (the workload's connection ends), and Unpin removes it.
func TestPins(t *testing.T) {
	name, ns := namespace(t)
	handed, err := os.Open("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	pins := Pins{Dir: filepath.Join(t.TempDir(), "netns")}
	path, err := pins.Pin(handed, "c-1")
	if err != nil {
		t.Fatal(err)
	}
	handed.Close()
	if !sameNS(t, ns, path) || !pins.Pinned(path) || len(pins.List()) != 1 {
		t.Fatalf("pin %s does not hold the namespace", path)
	}
	// Pinning again (a refresh) replaces the pin in place.
	if again, err := pins.Pin(ns, "c-1"); err != nil || again != path || !sameNS(t, ns, path) {
		t.Fatalf("pinning again: %s, %v", again, err)
	}
	if _, err := pins.Pin(ns, "../x"); err == nil {
		t.Error("a pin name with '/' was taken")
	}
	pins.Unpin(path)
	if _, err := os.Stat(path); !os.IsNotExist(err) || len(pins.List()) != 0 {
		t.Errorf("after Unpin: %v, %v", err, pins.List())
	}
}
