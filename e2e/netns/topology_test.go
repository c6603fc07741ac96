package netns

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/internal/proc"
	"github.com/vwire/vwire/proxy/proxypb"
)

// run runs a command and fails the test if it fails.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNS runs a command in a network namespace.
func inNS(ns string, args ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
}

// world is the test's topology: an "internet" namespace with a bridge, a
// DNS server (CoreDNS) on it, and per domain a host namespace on the
// bridge running `vwire domain` with its gateway.
type world struct {
	t        testing.TB
	dir, bin string
	tag      string
	internet string
	dns      string // the DNS server's address
	domains  map[string]*host
}

type host struct {
	name, ns, addr, data string
	proc                 *e2e.Process
	args                 []string
	extra                []string // more flags for its vwire domain
}

func (w *world) ns(suffix string) string {
	name := "vn" + w.tag + suffix
	run(w.t, "ip", "netns", "add", name)
	w.t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	run(w.t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// newWorld builds the internet, its DNS server and one host per domain.
// The zones say where each domain's proxy and bundle endpoint are.
func newWorld(t testing.TB, bin string, domains ...string) *world {
	b := make([]byte, 3)
	rand.Read(b)
	w := &world{t: t, dir: t.TempDir(), bin: bin, tag: hex.EncodeToString(b), domains: map[string]*host{}}
	w.internet = w.ns("i")
	// A fixed MAC: a bridge otherwise takes its lowest port's, and hosts
	// attached later would change it under the others' ARP caches.
	run(t, "ip", "-n", w.internet, "link", "add", "br0", "address", "02:76:77:00:00:fe", "type", "bridge")
	run(t, "ip", "-n", w.internet, "addr", "add", "10.99.0.254/24", "dev", "br0")
	run(t, "ip", "-n", w.internet, "link", "set", "br0", "up")
	w.dns = "10.99.0.254:53"

	var corefile strings.Builder
	for i, d := range domains {
		h := &host{name: d, ns: w.attach(fmt.Sprintf("h%d", i), fmt.Sprintf("10.99.0.%d", i+1)), addr: fmt.Sprintf("10.99.0.%d", i+1), data: filepath.Join(w.dir, d)}
		w.domains[d] = h
		zone := filepath.Join(w.dir, d+".zone")
		os.WriteFile(zone, []byte(fmt.Sprintf(`$ORIGIN %[1]s.
@	3600 IN SOA ns.%[1]s. admin.%[1]s. 1 7200 3600 1209600 30
@	3600 IN NS ns.%[1]s.
ns	30 IN A 10.99.0.254
proxy	30 IN A %[2]s
_vwire._tcp	30 IN SRV 10 100 7001 proxy.%[1]s.
_spiffe-bundle._tcp	30 IN SRV 10 100 7002 proxy.%[1]s.
`, d, h.addr)), 0o600)
		fmt.Fprintf(&corefile, "%s:53 {\n    bind 10.99.0.254\n    file %s\n    errors\n}\n", d, zone)
	}
	conf := filepath.Join(w.dir, "Corefile")
	os.WriteFile(conf, []byte(corefile.String()), 0o600)
	dns := inNS(w.internet, e2e.ToolPath(t, "coredns"), "-conf", conf)
	dns.Stdout, dns.Stderr = os.Stderr, os.Stderr
	if err := dns.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dns.Process.Kill(); dns.Wait() })
	for _, d := range domains {
		w.start(w.domains[d])
	}
	// Federate every pair through the real commands.
	for _, d := range domains {
		bundle := filepath.Join(w.dir, d+".bundle")
		os.WriteFile(bundle, []byte(w.cli(d, "federation", "bundle")), 0o600)
		for _, other := range domains {
			if other != d {
				w.cli(other, "federation", "add", d, "--bundle", bundle)
			}
		}
	}
	return w
}

// attach makes a host namespace on the internet's bridge with address
// addr (10.99.0.N) and a default route through it.
func (w *world) attach(suffix, addr string) string {
	ns := w.ns(suffix)
	out := "vn" + w.tag + "u" + suffix
	run(w.t, "ip", "link", "add", out, "netns", w.internet, "type", "veth", "peer", "name", "eth0", "netns", ns)
	run(w.t, "ip", "-n", w.internet, "link", "set", out, "master", "br0", "up")
	run(w.t, "ip", "-n", ns, "addr", "add", addr+"/24", "dev", "eth0")
	run(w.t, "ip", "-n", ns, "link", "set", "eth0", "up")
	run(w.t, "ip", "-n", ns, "route", "add", "default", "via", "10.99.0.254")
	return ns
}

// gatewayNode is a second node of domain d, at addr, running `vwire
// gateway` with credentials from the domain's CA (and extra flags).
func (w *world) gatewayNode(d, name, addr string, extra ...string) *host {
	h := w.domains[d]
	n := &host{name: name, ns: w.attach(name, addr), addr: addr, data: filepath.Join(w.dir, d+"-"+name)}
	creds := filepath.Join(w.dir, d+"-"+name+"-creds")
	run(w.t, w.bin, "ca", "issue", "spiffe://"+d+"/vwire/gateway/"+name, "--data-dir", h.data, "--out", creds)
	n.args = []string{"netns", "exec", n.ns, w.bin, "gateway", "--registry", h.addr + ":7001", "--credentials", creds,
		"--data-dir", n.data, "--listen", addr + ":7003", "--tunnel-grace", testGrace}
	n.args = append(n.args, extra...)
	n.proc = e2e.StartVwire(w.t, "ip", nil, n.args...)
	return n
}

// start runs the domain's `vwire domain` in its host namespace.
func (w *world) start(h *host) {
	h.args = []string{"netns", "exec", h.ns, w.bin, "domain", "--name", h.name, "--data-dir", h.data,
		"--listen", h.addr + ":7001", "--bundle-listen", h.addr + ":7002", "--dns-server", w.dns,
		"--connection-lifetime", "30s", "--tunnel-grace", testGrace}
	h.args = append(h.args, h.extra...)
	h.proc = e2e.StartVwire(w.t, "ip", nil, h.args...)
}

// restart stops the domain's process (SIGTERM: it removes what it
// programmed) and starts it again with extra flags.
func (w *world) restart(h *host, extra ...string) {
	w.t.Helper()
	h.proc.Signal(syscall.SIGTERM)
	h.extra = extra
	w.start(h)
}

// cli runs a vwire client command against domain d, from its host.
func (w *world) cli(d string, args ...string) string {
	w.t.Helper()
	h := w.domains[d]
	return run(w.t, "ip", append([]string{"netns", "exec", h.ns, w.bin}, append(args, "--registry", h.addr+":7001", "--credentials", filepath.Join(h.data, "admin"))...)...)
}

// workload makes a workload namespace on domain d's host.
func (w *world) workload(suffix string) string { return w.ns(suffix) }

// endpoint runs `vwire endpoint` on domain d's host.
func (w *world) endpoint(d, name string, args ...string) *e2e.Process {
	h := w.domains[d]
	return e2e.StartVwire(w.t, "ip", nil, append([]string{"netns", "exec", h.ns, w.bin, "endpoint", "--name", name,
		"--gateway", "unix://" + filepath.Join(h.data, "gateway.sock")}, args...)...)
}

// event is one line of `vwire connect -o json`.
type event struct {
	Event      string `json:"event"`
	Error      string `json:"error"`
	GapMS      int64  `json:"gap_ms"`
	SetupMS    int64  `json:"setup_ms"`
	Connection struct {
		ID        string `json:"id"`
		Endpoint  string `json:"networkServiceEndpointName"`
		MTU       int    `json:"mtu"`
		IPContext struct {
			Src []string `json:"srcIpAddrs"`
			Dst []string `json:"dstIpAddrs"`
		} `json:"ipContext"`
		Mechanism map[string]json.RawMessage `json:"mechanism"`
	} `json:"connection"`
}

// proto is the connection as the gateway knows it: its id.
func (e event) proto() *proxypb.Connection { return &proxypb.Connection{Id: e.Connection.ID} }

func (e event) peer() string { return strings.Split(e.Connection.IPContext.Dst[0], "/")[0] }
func (e event) self() string { return strings.Split(e.Connection.IPContext.Src[0], "/")[0] }

// connection is a running `vwire connect`.
type connection struct {
	p      *proc.Process
	events chan event // after the first, up
	Up     event
}

// connect runs `vwire connect` on domain d's host and waits for its vWire.
func (w *world) connect(d, service, netns string, args ...string) *connection {
	w.t.Helper()
	h := w.domains[d]
	return w.run(inNS(h.ns, append([]string{w.bin, "connect", service, "--netns", netns, "-o", "json",
		"--gateway", "unix://" + filepath.Join(h.data, "gateway.sock")}, args...)...), service)
}

// connectFrom runs `vwire connect` inside workload namespace netns, as a
// sidecar in a container does: it hands its own namespace to domain d's
// gateway.
func (w *world) connectFrom(d, service, netns string, args ...string) *connection {
	w.t.Helper()
	return w.run(inNS(netns, append([]string{w.bin, "connect", service, "-o", "json",
		"--gateway", "unix://" + filepath.Join(w.domains[d].data, "gateway.sock")}, args...)...), service)
}

// run starts a `vwire connect` and waits for its vWire.
func (w *world) run(cmd *exec.Cmd, service string) *connection {
	w.t.Helper()
	c := &connection{events: make(chan event, 100)}
	first := true
	each := func(line string) {
		e2e.LogOutput(w.t, "vwire connect "+service, line)
		var ev event
		if json.Unmarshal([]byte(line), &ev) != nil {
			return
		}
		if first { // up: Start returns it
			first = false
			return
		}
		select {
		case c.events <- ev:
		default: // nobody is listening: the test did not ask
		}
	}
	p, line, err := proc.Start(context.Background(), cmd, 30*time.Second, each, func(l string) bool { return strings.HasPrefix(l, "{") })
	if err != nil {
		w.t.Fatalf("vwire connect %s: %v (its output is above)", service, err)
	}
	c.p = p
	w.t.Cleanup(c.stop)
	if json.Unmarshal([]byte(line), &c.Up); c.Up.Event != "up" {
		w.t.Fatalf("vwire connect %s: first event %q, want up", service, c.Up.Event)
	}
	return c
}

// drain drops the events seen so far: a wait after it sees only what
// comes next.
func (c *connection) drain() {
	for {
		select {
		case <-c.events:
		default:
			return
		}
	}
}

// wait waits for an event of kind.
func (c *connection) wait(t *testing.T, kind string, within time.Duration) event {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case ev := <-c.events:
			if ev.Event == kind {
				return ev
			}
		case <-deadline:
			t.Fatalf("no %q event within %v", kind, within)
		}
	}
}

// stop interrupts the client (which closes its vWire) and waits.
func (c *connection) stop() {
	if c.p.Cmd.ProcessState == nil {
		c.p.Stop(15 * time.Second)
	}
}
