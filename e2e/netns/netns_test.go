// Package netns holds the data plane's end-to-end tests: real vwire
// binaries in network namespaces, two federated domains discovered
// through a real DNS server (CoreDNS), workloads pinging and carrying
// TCP and UDP over vWires. They run as root.
package netns

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

var vwireBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "vwire-netns-")
	if err != nil {
		panic(err)
	}
	vwireBin = filepath.Join(dir, "vwire")
	if out, err := exec.Command("go", "build", "-o", vwireBin, "github.com/vwire/vwire/cmd/vwire").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building vwire: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const ipService = `apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata:
  name: svc
spec:
  payload: IP
---
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata:
  name: l2
spec:
  payload: ETHERNET
`

// snapshot is what a gateway host has programmed: links, rules, routes.
func snapshot(t *testing.T, ns string) string {
	links := run(t, "ip", "-n", ns, "-o", "link", "show")
	// Interface indexes and counters change; names and kinds are what count.
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(links), "\n") {
		f := strings.Fields(l)
		if len(f) > 1 {
			names = append(names, strings.SplitN(f[1], "@", 2)[0])
		}
	}
	return strings.Join(names, " ") + "\n" + run(t, "ip", "-n", ns, "rule", "show") + run(t, "ip", "-4", "-n", ns, "route", "show", "table", "all")
}

func ping(ns, addr string, args ...string) error {
	out, err := exec.Command("ip", append([]string{"netns", "exec", ns, "ping", "-c", "2", "-W", "2"}, append(args, addr)...)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), " 0% packet loss") {
		return fmt.Errorf("ping %s from %s %v: %v\n%s", addr, ns, args, err, out)
	}
	return nil
}

// The data-plane issue's "done when": two domains in namespaces,
// federated, discovered through CoreDNS; a client in a reaches svc@b over
// WireGuard, pings both ways, carries TCP and UDP, has the right MTU,
// survives a SIGKILL of its gateway, and leaves nothing behind when
// closed.
func TestIPvWireAcrossDomains(t *testing.T) {
	requireRoot(t, "ping", "iperf3")
	w := newWorld(t, vwireBin, "a.example", "b.example")
	os.WriteFile(filepath.Join(w.dir, "svc.yaml"), []byte(ipService), 0o600)
	w.cli("b.example", "apply", "-f", filepath.Join(w.dir, "svc.yaml"))
	epNS := w.workload("eb")
	w.endpoint("b.example", "ep1", "--service", "svc", "--labels", "app=x", "--cidr", "172.16.5.0/24", "--netns", epNS)
	clientNS := w.workload("ca")
	a, b := w.domains["a.example"], w.domains["b.example"]
	beforeA, beforeB := snapshot(t, a.ns), snapshot(t, b.ns)

	c := w.connect("a.example", "svc@b.example", clientNS, "--probe-interval", "100ms")
	t.Logf("set-up took %d ms; endpoint %s, MTU %d", c.Up.SetupMS, c.Up.Connection.Endpoint, c.Up.Connection.MTU)
	if c.Up.Connection.Endpoint != "ep1@b.example" || c.Up.Connection.Mechanism["wireguard"] == nil {
		t.Fatalf("connected to %q with mechanism %v, want ep1@b.example over wireguard", c.Up.Connection.Endpoint, c.Up.Connection.Mechanism)
	}

	t.Run("ping both ways", func(t *testing.T) {
		if err := ping(clientNS, c.Up.peer()); err != nil {
			t.Error(err)
		}
		if err := ping(epNS, c.Up.self()); err != nil {
			t.Error(err)
		}
	})

	t.Run("MTU", func(t *testing.T) {
		mtu := c.Up.Connection.MTU
		if mtu != 1500-60 {
			t.Errorf("MTU %d, want 1440 (1500 less WireGuard's 60)", mtu)
		}
		if err := ping(clientNS, c.Up.peer(), "-M", "do", "-s", fmt.Sprint(mtu-28)); err != nil {
			t.Errorf("a don't-fragment ping of exactly the MTU: %v", err)
		}
		if err := ping(clientNS, c.Up.peer(), "-M", "do", "-s", fmt.Sprint(mtu-27)); err == nil {
			t.Errorf("a don't-fragment ping one byte over the MTU passed")
		}
	})

	t.Run("TCP and UDP", func(t *testing.T) {
		srv := inNS(epNS, "iperf3", "-s", "-1", "-B", c.Up.peer())
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { srv.Process.Kill(); srv.Wait() }()
		time.Sleep(300 * time.Millisecond)
		out, err := inNS(clientNS, "iperf3", "-c", c.Up.peer(), "-t", "2", "--connect-timeout", "3000").CombinedOutput()
		if err != nil || !regexp.MustCompile(`receiver`).Match(out) {
			t.Fatalf("TCP bulk transfer: %v\n%s", err, out)
		}
		t.Logf("TCP: %s", lastRate(out))
		srv.Wait()
		srv = inNS(epNS, "iperf3", "-s", "-1", "-B", c.Up.peer())
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		out, err = inNS(clientNS, "iperf3", "-u", "-b", "50M", "-c", c.Up.peer(), "-t", "1", "--connect-timeout", "3000").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "receiver") {
			t.Fatalf("UDP: %v\n%s", err, out)
		}
		t.Logf("UDP: %s", lastRate(out))
	})

	t.Run("gateway SIGKILL heals", func(t *testing.T) {
		killed := time.Now()
		a.proc.Cmd.Process.Signal(syscall.SIGKILL)
		a.proc.Cmd.Wait()
		w.start(a)
		started := time.Since(killed)
		ev := c.wait(t, "healed", 30*time.Second)
		t.Logf("data-path gap after SIGKILL of a's gateway: %d ms (restart to ready took %v)", ev.GapMS, started.Round(time.Millisecond))
		if err := ping(clientNS, c.Up.peer()); err != nil {
			t.Error(err)
		}
	})

	t.Run("closing leaves nothing behind", func(t *testing.T) {
		c.stop()
		if got := snapshot(t, a.ns); got != beforeA {
			t.Errorf("a's host after close:\n%s\nbefore:\n%s", got, beforeA)
		}
		if got := snapshot(t, b.ns); got != beforeB {
			t.Errorf("b's host after close:\n%s\nbefore:\n%s", got, beforeB)
		}
		if out := run(t, "ip", "-n", clientNS, "-o", "link", "show"); strings.Contains(out, "nsm0") {
			t.Errorf("the client's interface is still there:\n%s", out)
		}
		if out := run(t, "ip", "-n", epNS, "-o", "link", "show"); strings.Contains(out, "nsm") {
			t.Errorf("the endpoint's interface is still there:\n%s", out)
		}
	})
}

func lastRate(out []byte) string {
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "receiver") {
			return strings.Join(strings.Fields(l)[4:7], " ")
		}
	}
	return "?"
}
