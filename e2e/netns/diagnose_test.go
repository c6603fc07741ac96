package netns

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vwire/vwire/e2e"
)

// vwire diagnose through the real binary, on the real data plane: with a
// live vWire every hop passes, the handshake of its tunnel included; on a
// link whose MTU leaves too little inside WireGuard, the mtu hop fails
// and says so (exit status 1). vwire status shows the live vWire on the
// domain's gateway.
func TestDiagnose(t *testing.T) {
	e2e.RequireRoot(t, "ping", "nft")
	w := newWorld(t, vwireBin, "a.example", "b.example")
	os.WriteFile(filepath.Join(w.dir, "svc.yaml"), []byte(ipService), 0o600)
	w.cli("b.example", "apply", "-f", filepath.Join(w.dir, "svc.yaml"))
	w.endpoint("b.example", "ep1", "--service", "svc", "--cidr", "172.16.0.0/24", "--netns", w.workload("e"))
	clientNS := w.workload("c")
	c := w.connect("a.example", "svc@b.example", clientNS)
	if err := ping(clientNS, c.Up.peer()); err != nil {
		t.Fatal(err)
	}
	out := w.cli("a.example", "diagnose", "svc@b.example")
	for _, hop := range []string{"dns", "federation", "peer-proxy", "service", "policy", "endpoints", "mtu", "data-plane"} {
		if !strings.Contains(out, "ok   "+hop) {
			t.Errorf("hop %s did not pass:\n%s", hop, out)
		}
	}
	if !strings.Contains(out, "selected: ep1") || !strings.Contains(out, "1 vWire(s) to b.example") {
		t.Errorf("diagnose does not name the endpoint or the live vWire:\n%s", out)
	}

	// vwire status, on the same domain: its one etcd member leads, its
	// peer answers, its gateway carries the one vWire.
	b := w.domains["b.example"]
	status := w.cli("a.example", "status")
	hostname, _ := os.Hostname()
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^vwire\s+http://\S+\s+leader$`),
		regexp.MustCompile(`(?m)^b\.example\s+true\s+bundle endpoint\s`),
		regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(hostname) + `\s+spiffe://a\.example/vwire/proxy\s+1$`),
		regexp.MustCompile(`(?m)^CONNECTIONS\s+up 1$`),
	} {
		if !want.MatchString(status) {
			t.Errorf("vwire status has no line matching %s:\n%s", want, status)
		}
	}

	// vwire describe: the connection's tunnel and interface on a's gateway,
	// b's service with its endpoint.
	desc := w.cli("a.example", "describe", "connection", c.Up.Connection.ID)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^0 gateway\.\S+\s+spiffe://a\.example/vwire/proxy\s+expires in `),
		regexp.MustCompile(`(?m)^WireGuard tunnel here: last handshake \d+s ago, [1-9]\d* bytes sent, [1-9]\d* received$`),
		regexp.MustCompile(`(?m)^interface here: from the workload [1-9]\d* bytes \([1-9]\d* packets\)`),
		regexp.MustCompile(`(?m)^payload IP, tunnel wireguard, MTU 1440$`),
	} {
		if !want.MatchString(desc) {
			t.Errorf("vwire describe connection has no line matching %s:\n%s", want, desc)
		}
	}
	if desc := w.cli("b.example", "describe", "service", "svc"); !strings.Contains(desc, "1 endpoints: ep1") {
		t.Errorf("vwire describe service svc:\n%s", desc)
	}

	// UDP from a to b blocked (DNS aside), the tunnel gone with the vWire
	// (its grace passed): a new vWire fails at the handshake, and diagnose
	// says so at the data-plane hop.
	a := w.domains["a.example"]
	c.stop()
	for deadline := time.Now().Add(30 * time.Second); strings.Contains(run(t, "ip", "-n", a.ns, "-o", "link", "show"), ": wg"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a's WireGuard device outlived its grace by 30 s")
		}
	}
	for _, rule := range [][]string{{"add", "table", "inet", "vwtest"}, {"add", "chain", "inet", "vwtest", "out", "{ type filter hook output priority 0; }"},
		{"add", "rule", "inet", "vwtest", "out", "ip", "daddr", b.addr, "udp", "dport", "!=", "53", "drop"}} {
		run(t, "ip", append([]string{"netns", "exec", a.ns, "nft"}, rule...)...)
	}
	refused, err := inNS(a.ns, w.bin, "connect", "svc@b.example", "--once", "--netns", w.workload("c2"),
		"--gateway", "unix://"+filepath.Join(a.data, "gateway.sock")).CombinedOutput()
	if err == nil || !strings.Contains(string(refused), "does not answer WireGuard") {
		t.Fatalf("a vWire with UDP to b blocked: %v\n%s", err, refused)
	}
	got, err := inNS(a.ns, w.bin, "diagnose", "svc@b.example", "--registry", a.addr+":7001", "--credentials", filepath.Join(a.data, "admin")).CombinedOutput()
	if err == nil || !regexp.MustCompile(`(?m)^FAIL data-plane\s+the last vWire to b\.example failed \S+ ago in the data plane: .*does not answer WireGuard`).Match(got) {
		t.Errorf("diagnose with UDP to b blocked: %v\n%s", err, got)
	}

	run(t, "ip", "-n", a.ns, "link", "set", "eth0", "mtu", "1300")
	w.restart(a)
	got, err = inNS(a.ns, w.bin, "diagnose", "svc@b.example", "--registry", a.addr+":7001", "--credentials", filepath.Join(a.data, "admin")).CombinedOutput()
	if err == nil || !strings.Contains(string(got), "FAIL mtu") || !strings.Contains(string(got), "a 1300-byte outer MTU leaves 1240 bytes inside the tunnels") {
		t.Errorf("diagnose on a 1300-byte link: %v\n%s", err, got)
	}
}
