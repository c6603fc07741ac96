package netns

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/gateway/kernel"
)

var vwireBin string

func TestMain(m *testing.M) {
	if spec := os.Getenv(wireGuardHelperEnv); spec != "" {
		os.Exit(runWireGuardHelper(spec))
	}
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
---
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata:
  name: l2plain
spec:
  payload: ETHERNET
  plainVxlan: true
---
apiVersion: networkservicemesh.io/v1
kind: NetworkService
metadata:
  name: svc6
spec:
  payload: IP
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
	// IPv6 routes the kernel makes itself come and go with IPv6 forwarding
	// (the subnet-router anycast) and address autoconfiguration: only the
	// others count.
	var v6 []string
	for _, r := range strings.SplitAfter(run(t, "ip", "-6", "-n", ns, "route", "show", "table", "all"), "\n") {
		if !strings.Contains(r, " proto kernel ") {
			v6 = append(v6, r)
		}
	}
	return strings.Join(names, " ") + "\n" + run(t, "ip", "-n", ns, "rule", "show") + run(t, "ip", "-4", "-n", ns, "route", "show", "table", "all") +
		run(t, "ip", "-6", "-n", ns, "rule", "show") + strings.Join(v6, "")
}

// testGrace is how long the tests' gateways keep a WireGuard tunnel after
// its last vWire (--tunnel-grace; 30 s unless told).
const testGrace = "1s"

// settled waits until ns's snapshot is want again (its idle tunnels gone
// after testGrace), and returns the last one it took.
func settled(t *testing.T, ns, want string) string {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		got := snapshot(t, ns)
		if got == want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// fullSnapshot adds the nftables tables: the gateway's MSS clamping table
// stays while it runs, and goes when it stops.
func fullSnapshot(t *testing.T, ns string) string {
	return snapshot(t, ns) + "nftables: " + nftTables(t, ns) + "\n"
}

// nftTables names the nftables tables of namespace ns.
func nftTables(t *testing.T, ns string) string {
	h, err := kernel.OpenNS(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		t.Fatal(err)
	}
	tables, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tb := range tables {
		names = append(names, tb.Name)
	}
	return strings.Join(names, " ")
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
	e2e.RequireRoot(t, "ping", "iperf3")
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
		if err != nil || !strings.Contains(string(out), "receiver") {
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

	// Both workloads raise their link's MTU (as a router with jumbo frames
	// behind them would have): the gateways clamp the MSS that each SYN
	// offers to what the vWire carries, so TCP still works.
	t.Run("TCP MSS is clamped", func(t *testing.T) {
		epIface := strings.TrimSuffix(strings.Fields(run(t, "ip", "-n", epNS, "-o", "link", "show", "type", "veth"))[1], ":")
		epIface, _, _ = strings.Cut(epIface, "@")
		for _, l := range []struct{ ns, dev string }{{clientNS, "nsm0"}, {epNS, epIface}} {
			run(t, "ip", "-n", l.ns, "link", "set", l.dev, "mtu", "9000")
			defer run(t, "ip", "-n", l.ns, "link", "set", l.dev, "mtu", fmt.Sprint(c.Up.Connection.MTU))
		}
		srv := inNS(epNS, "iperf3", "-s", "-1", "-B", c.Up.peer())
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { srv.Process.Kill(); srv.Wait() }()
		time.Sleep(300 * time.Millisecond)
		out, err := inNS(clientNS, "iperf3", "-V", "-c", c.Up.peer(), "-t", "1", "--connect-timeout", "3000").CombinedOutput()
		m := regexp.MustCompile(`TCP MSS: (\d+)`).FindSubmatch(out)
		if err != nil || m == nil {
			t.Fatalf("TCP over the vWire with 9000-byte workload links: %v\n%s", err, out)
		}
		if mss, _ := strconv.Atoi(string(m[1])); mss > c.Up.Connection.MTU-40 {
			t.Errorf("TCP MSS %d across a vWire of MTU %d: the gateways did not clamp it\n%s", mss, c.Up.Connection.MTU, out)
		}
		t.Logf("TCP MSS with 9000-byte workload links: %s; %s", m[1], lastRate(out))
	})

	t.Run("gateway SIGKILL heals", func(t *testing.T) {
		killed := time.Now()
		a.proc.Signal(syscall.SIGKILL)
		w.start(a)
		started := time.Since(killed)
		ev := c.wait(t, "healed", 30*time.Second)
		t.Logf("data-path gap after SIGKILL of a's gateway: %d ms (restart to ready took %v)", ev.GapMS, started.Round(time.Millisecond))
		// The client's own re-request follows the heal when its socket to
		// the gateway reconnects (seen once in CI: a ping lost then, not
		// reproduced since); the vWire must carry pings again within 10 s.
		deadline := time.Now().Add(10 * time.Second)
		for tries := 1; ; tries++ {
			err := ping(clientNS, c.Up.peer())
			if err == nil {
				if tries > 1 {
					t.Logf("pings passed only at try %d after the heal: a second blip", tries)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no ping through the vWire 10 s after it healed: %v", err)
			}
		}
	})

	// --keep-dataplane: a stopped domain leaves the client's interface and
	// routes in place (its embedded WireGuard device ends with it), and
	// takes them up again when it starts.
	t.Run("SIGTERM with --keep-dataplane keeps the vWire", func(t *testing.T) {
		// A heal of the subtest before is not this restart's.
		c.drain()
		w.restart(a, "--keep-dataplane") // a plain SIGTERM first: the client re-requests
		c.wait(t, "healed", 30*time.Second)
		if err := a.proc.Signal(syscall.SIGTERM); err != nil {
			t.Errorf("a's exit after SIGTERM: %v", err)
		}
		if out := run(t, "ip", "-n", clientNS, "-o", "addr", "show", "dev", "nsm0"); !strings.Contains(out, c.Up.self()) {
			t.Errorf("the client's interface or address went with --keep-dataplane:\n%s", out)
		}
		w.start(a)
		deadline := time.Now().Add(30 * time.Second)
		for ping(clientNS, c.Up.peer()) != nil {
			if time.Now().After(deadline) {
				t.Fatal("no ping through the kept vWire 30 s after a started again")
			}
		}
	})

	t.Run("closing leaves nothing behind", func(t *testing.T) {
		c.stop()
		if got := settled(t, a.ns, beforeA); got != beforeA {
			t.Errorf("a's host after close and the tunnel's grace:\n%s\nbefore:\n%s", got, beforeA)
		}
		if got := settled(t, b.ns, beforeB); got != beforeB {
			t.Errorf("b's host after close and the tunnel's grace:\n%s\nbefore:\n%s", got, beforeB)
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

// Several vWires at once: the reference manifest's firewall → vpn-gateway
// selection across domains, a second client in the endpoint's own domain
// on the same service, and an Ethernet-payload service over VXLAN whose
// two ends see each other's MAC addresses. Bad requests leave nothing.
func TestSelectionEthernetAndRefusals(t *testing.T) {
	e2e.RequireRoot(t, "ping", "arping")
	w := newWorld(t, vwireBin, "a.example", "b.example", "c.example")
	b := w.domains["b.example"]
	beforeB := fullSnapshot(t, b.ns)
	os.WriteFile(filepath.Join(w.dir, "svc.yaml"), []byte(ipService), 0o600)
	w.cli("b.example", "apply", "-f", filepath.Join(w.dir, "svc.yaml"))
	// c's gateway tells its peers an address that no route leads to.
	c := w.domains["c.example"]
	run(t, "ip", "-n", c.ns, "addr", "add", "10.99.77.1/32", "dev", "lo")
	w.restart(c, "--gateway-address", "10.99.77.1")
	w.cli("c.example", "apply", "-f", filepath.Join(w.dir, "svc.yaml"))
	w.endpoint("c.example", "ep-c", "--service", "svc", "--cidr", "172.16.40.0/24", "--netns", w.workload("ec"))
	w.cli("b.example", "apply", "-f", "../../registry/testdata/secure-intranet-connectivity.yaml")
	vpnNS, fwNS, l2NS := w.workload("vpn"), w.workload("fw"), w.workload("l2")
	w.endpoint("b.example", "vpn-gateway-1", "--service", "secure-intranet-connectivity", "--labels", "app=vpn-gateway", "--cidr", "172.16.10.0/24", "--netns", vpnNS)
	w.endpoint("b.example", "firewall-1", "--service", "secure-intranet-connectivity", "--labels", "app=firewall", "--cidr", "172.16.20.0/24", "--netns", fwNS)
	w.endpoint("b.example", "l2-1", "--service", "l2", "--payload", "ETHERNET", "--cidr", "172.16.30.0/24", "--netns", l2NS)
	plainNS := w.workload("l2p")
	w.endpoint("b.example", "l2p-1", "--service", "l2plain", "--payload", "ETHERNET", "--cidr", "172.16.31.0/24", "--netns", plainNS)
	v6NS := w.workload("v6")
	w.endpoint("b.example", "ep6", "--service", "svc6", "--cidr", "fd00:16::/120", "--netns", v6NS)

	fw, other, local := w.workload("c1"), w.workload("c2"), w.workload("c3")
	toVPN := w.connect("a.example", "secure-intranet-connectivity@b.example", fw, "--labels", "app=firewall")
	toFW := w.connect("a.example", "secure-intranet-connectivity@b.example", other, "--labels", "app=web")
	inB := w.connect("b.example", "secure-intranet-connectivity", local, "--labels", "app=firewall")
	for _, c := range []struct {
		conn         *connection
		ns, endpoint string
	}{{toVPN, fw, "vpn-gateway-1@b.example"}, {toFW, other, "firewall-1@b.example"}, {inB, local, "vpn-gateway-1"}} {
		if c.conn.Up.Connection.Endpoint != c.endpoint {
			t.Errorf("client in %s got endpoint %q, want %q", c.ns, c.conn.Up.Connection.Endpoint, c.endpoint)
		}
		if err := ping(c.ns, c.conn.Up.peer()); err != nil {
			t.Error(err)
		}
	}
	if toVPN.Up.Connection.ID == inB.Up.Connection.ID || toVPN.Up.peer() == inB.Up.peer() {
		t.Errorf("two clients of one endpoint share a vWire: %v / %v", toVPN.Up.Connection, inB.Up.Connection)
	}

	// arping from the client's namespace is answered with the MAC address
	// of the endpoint's interface: the two ends share one Ethernet link.
	sameLink := func(t *testing.T, c *connection, ns string) {
		t.Helper()
		epIface := run(t, "ip", "-n", l2NS, "-o", "link", "show") + run(t, "ip", "-n", plainNS, "-o", "link", "show")
		out, err := inNS(ns, "arping", "-c", "2", "-w", "3", "-I", "nsm0", c.Up.peer()).CombinedOutput()
		if err != nil {
			t.Fatalf("arping across the vWire: %v\n%s", err, out)
		}
		mac := regexp.MustCompile(`[0-9a-f]{2}(:[0-9a-f]{2}){5}`).Find(out)
		if mac == nil || !strings.Contains(epIface, string(mac)) {
			t.Errorf("arping answered\n%s\nthe endpoint's interfaces are\n%s", out, epIface)
		}
		if err := ping(ns, c.Up.peer()); err != nil {
			t.Error(err)
		}
	}
	// What crosses the network between the domains' hosts: a marked
	// payload sent over a vWire is seen there only when its service asked
	// for plain VXLAN.
	const mark = "vwire-in-clear!"
	crosses := func(t *testing.T, ns, addr string) int {
		t.Helper()
		stop := e2e.Capture(t, w.domains["a.example"].ns, "eth0") // the client host's uplink
		out, err := inNS(ns, "ping", "-c", "3", "-w", "6", "-p", hex.EncodeToString([]byte(mark)), addr).CombinedOutput()
		if err != nil {
			t.Fatalf("marked ping: %v\n%s", err, out)
		}
		return bytes.Count(stop(), []byte(mark))
	}
	t.Run("IP inside WireGuard, never in clear", func(t *testing.T) {
		if n := crosses(t, fw, toVPN.Up.peer()); n != 0 {
			t.Errorf("the mark crossed between the hosts in clear %d times", n)
		}
	})
	t.Run("Ethernet inside WireGuard, never in clear", func(t *testing.T) {
		l2 := w.workload("c4")
		c := w.connect("a.example", "l2@b.example", l2)
		if c.Up.Connection.Mechanism["wireguard"] == nil {
			t.Fatalf("mechanism %v, want wireguard", c.Up.Connection.Mechanism)
		}
		sameLink(t, c, l2)
		if n := crosses(t, l2, c.Up.peer()); n != 0 {
			t.Errorf("the mark crossed between the hosts in clear %d times", n)
		}
	})
	t.Run("Ethernet as plain VXLAN, when the service says so", func(t *testing.T) {
		l2 := w.workload("c9")
		c := w.connect("a.example", "l2plain@b.example", l2)
		if c.Up.Connection.Mechanism["vxlan"] == nil {
			t.Fatalf("mechanism %v, want vxlan", c.Up.Connection.Mechanism)
		}
		sameLink(t, c, l2)
		if n := crosses(t, l2, c.Up.peer()); n == 0 {
			t.Error("the plain VXLAN vWire's mark was not seen between the hosts: the capture sees nothing")
		}
		if out := w.cli("b.example", "get", "services"); !regexp.MustCompile(`l2plain\s+ETHERNET\s+plain VXLAN \(unencrypted\)`).MatchString(out) ||
			!regexp.MustCompile(`l2\s+ETHERNET\s+VXLAN in WireGuard`).MatchString(out) {
			t.Errorf("vwire get services:\n%s", out)
		}
	})
	localL2 := w.workload("c6")
	t.Run("Ethernet between two workloads of one gateway", func(t *testing.T) {
		sameLink(t, w.connect("b.example", "l2", localL2), localL2)
	})

	t.Run("IPv6", func(t *testing.T) {
		ns := w.workload("c7")
		c := w.connect("a.example", "svc6@b.example", ns)
		if c.Up.Connection.Mechanism["wireguard"] == nil || !strings.HasPrefix(c.Up.peer(), "fd00:16::") {
			t.Fatalf("%s over %v, want an address of fd00:16::/120 over wireguard", c.Up.peer(), c.Up.Connection.Mechanism)
		}
		if err := ping(ns, c.Up.peer()); err != nil {
			t.Error(err)
		}
		if err := ping(v6NS, c.Up.self()); err != nil {
			t.Error(err)
		}
		// And routed by b's gateway to a client of its own.
		inB := w.workload("c8")
		if err := ping(inB, w.connect("b.example", "svc6", inB).Up.peer()); err != nil {
			t.Error(err)
		}
	})

	t.Run("refusals leave nothing", func(t *testing.T) {
		a := w.domains["a.example"]
		before := snapshot(t, a.ns)
		taken := w.workload("c5")
		run(t, "ip", "-n", taken, "link", "add", "nsm0", "type", "veth", "peer", "name", "x0")
		for _, c := range []struct {
			args []string
			says string
		}{
			{[]string{"svc@b.example", "--netns", "vn-no-such-ns"}, `network namespace "vn-no-such-ns" does not exist`},
			{[]string{"svc@b.example", "--netns", taken}, `interface "nsm0" is already in use`},
			{[]string{"no-such-service@b.example", "--netns", other, "--interface", "nsm9"}, `"no-such-service" is not registered`},
			{[]string{"svc@d.example", "--netns", other, "--interface", "nsm9"}, "_vwire._tcp.d.example"},
			{[]string{"svc@c.example", "--netns", other, "--interface", "nsm9"}, "the endpoint's gateway at 10.99.77.1:"},
		} {
			out, err := inNS(a.ns, append([]string{w.bin, "connect", "--once", "--gateway", "unix://" + filepath.Join(a.data, "gateway.sock")}, c.args...)...).CombinedOutput()
			if err == nil || !strings.Contains(string(out), c.says) {
				t.Errorf("vwire connect %v: %v, want an error saying %q:\n%s", c.args, err, c.says, out)
			}
			t.Logf("vwire connect %v: %s", c.args, strings.TrimSpace(string(out)))
		}
		if got := snapshot(t, a.ns); got != before {
			t.Errorf("refused requests changed a's host:\n%s\nbefore:\n%s", got, before)
		}
		if out := run(t, "ip", "-n", other, "-o", "link", "show"); strings.Contains(out, "nsm9") {
			t.Errorf("a refused request left its interface:\n%s", out)
		}
	})

	// b stops while its vWires are up: SIGTERM removes every interface,
	// route and tunnel it made.
	t.Run("SIGTERM removes what the domain programmed", func(t *testing.T) {
		if err := b.proc.Signal(syscall.SIGTERM); err != nil {
			t.Errorf("b's exit after SIGTERM: %v", err)
		}
		if got := fullSnapshot(t, b.ns); got != beforeB {
			t.Errorf("b's host after SIGTERM:\n%s\nbefore:\n%s", got, beforeB)
		}
		for _, ns := range []string{vpnNS, fwNS, l2NS, local, localL2, v6NS} {
			if out := run(t, "ip", "-n", ns, "-o", "link", "show"); strings.Contains(out, "nsm") {
				t.Errorf("%s still has a vWire interface:\n%s", ns, out)
			}
		}
	})
}
