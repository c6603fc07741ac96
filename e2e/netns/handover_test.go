package netns

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vwire/vwire/e2e"
)

// A client and an endpoint that run inside their workloads' namespaces (as
// sidecars in containers do) name none: each hands its own to its gateway
// over the socket. The gateways pin them while the vWire lives, refuse
// their own namespace, and leave nothing behind when it closes.
func TestHandedNamespaces(t *testing.T) {
	e2e.RequireRoot(t, "ping")
	w := newWorld(t, vwireBin, "a.example", "b.example")
	os.WriteFile(filepath.Join(w.dir, "svc.yaml"), []byte(ipService), 0o600)
	w.cli("b.example", "apply", "-f", filepath.Join(w.dir, "svc.yaml"))
	a, b := w.domains["a.example"], w.domains["b.example"]
	beforeA, beforeB := snapshot(t, a.ns), snapshot(t, b.ns)
	epNS, clientNS := w.workload("eb"), w.workload("ca")

	epReady := filepath.Join(w.dir, "ep1.ready")
	ep := e2e.StartVwire(t, "ip", nil, "netns", "exec", epNS, w.bin, "endpoint", "--name", "ep1", "--service", "svc", "--cidr", "172.16.6.0/24",
		"--gateway", "unix://"+filepath.Join(b.data, "gateway.sock"), "--ready-file", epReady)
	if !strings.Contains(ep.Ready, "interfaces in this network namespace") {
		t.Errorf("endpoint ready line: %s", ep.Ready)
	}
	// A pod's startup probe: vwire ready FILE.
	if out, err := exec.Command(w.bin, "ready", epReady).CombinedOutput(); err != nil || !strings.Contains(string(out), "up: endpoint ep1 of svc registered") {
		t.Errorf("vwire ready for the endpoint: %v\n%s", err, out)
	}
	c := w.connectFrom("a.example", "svc@b.example", clientNS)
	if err := ping(clientNS, c.Up.peer()); err != nil {
		t.Error(err)
	}
	if err := ping(epNS, c.Up.self()); err != nil {
		t.Error(err)
	}
	pins := func(h *host) []string {
		entries, _ := os.ReadDir(filepath.Join(h.data, "gateway", "netns"))
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return names
	}
	if got := pins(a); len(got) != 1 || got[0] != "c-"+c.Up.Connection.ID {
		t.Errorf("a's pins: %v, want the client's", got)
	}
	if got := pins(b); len(got) != 1 || got[0] != "e-"+c.Up.Connection.ID {
		t.Errorf("b's pins: %v, want the endpoint's", got)
	}

	t.Run("refusals", func(t *testing.T) {
		sock := "unix://" + filepath.Join(a.data, "gateway.sock")
		for _, tc := range []struct {
			args []string
			want string
		}{
			// On the gateway's host, with no --netns: its own namespace.
			{[]string{"connect", "svc@b.example", "--once", "--gateway", sock}, "is the gateway's own network namespace"},
			{[]string{"connect", "svc@b.example", "--once", "--gateway", sock, "--netns", "/proc/self/ns/net"}, `network namespace "/proc/self/ns/net" is the gateway's own`},
			{[]string{"connect", "svc@b.example", "--once", "--gateway", sock, "--netns", "/no/such/ns"}, `network namespace "/no/such/ns" does not exist`},
		} {
			out, err := inNS(a.ns, append([]string{w.bin}, tc.args...)...).CombinedOutput()
			if err == nil || !strings.Contains(string(out), tc.want) {
				t.Errorf("vwire %s: %v\n%s\nwant %q", strings.Join(tc.args, " "), err, out, tc.want)
			}
		}
		if got := pins(a); len(got) != 1 {
			t.Errorf("a refused request left pins: %v", got)
		}
		// What a pod's startup probe says about a sidecar that failed.
		ready := filepath.Join(w.dir, "refused.ready")
		if out, err := exec.Command(w.bin, "ready", ready).CombinedOutput(); err == nil || !strings.Contains(string(out), "not up yet: nothing reported so far") {
			t.Errorf("vwire ready before the sidecar wrote: %v\n%s", err, out)
		}
		inNS(a.ns, w.bin, "connect", "svc@b.example", "--once", "--gateway", sock, "--ready-file", ready).Run()
		if out, err := exec.Command(w.bin, "ready", ready).CombinedOutput(); err == nil || !strings.Contains(string(out), "not up: failed: requesting a vWire to svc@b.example: ") ||
			!strings.Contains(string(out), "is the gateway's own network namespace") {
			t.Errorf("vwire ready after a refused request: %v\n%s", err, out)
		}
	})

	t.Run("closing leaves nothing behind", func(t *testing.T) {
		c.stop()
		if got := pins(a); len(got) != 0 {
			t.Errorf("a's pins after close: %v", got)
		}
		if got := pins(b); len(got) != 0 {
			t.Errorf("b's pins after close: %v", got)
		}
		if got := settled(t, a.ns, beforeA); got != beforeA {
			t.Errorf("a's host after close and the tunnel's grace:\n%s\nbefore:\n%s", got, beforeA)
		}
		if got := settled(t, b.ns, beforeB); got != beforeB {
			t.Errorf("b's host after close and the tunnel's grace:\n%s\nbefore:\n%s", got, beforeB)
		}
		if out, _ := exec.Command("ip", "-n", clientNS, "-o", "link", "show").CombinedOutput(); strings.Contains(string(out), "nsm0") {
			t.Errorf("the client's interface is still there:\n%s", out)
		}
	})
}
