package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vwire/vwire/proxy"
)

// dig runs dig with args and returns its output.
func dig(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("dig", append([]string{"+time=2", "+tries=1"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("dig %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// A domain's zone (`vwire domain --dns-listen`) behind Debian's unbound,
// configured strictly: QNAME minimisation that never falls back to the
// full name, so an NXDOMAIN for _tcp.b.example would hide every SRV record
// below it. The SRV records resolve through it, a missing name is NXDOMAIN
// with the SOA for negative caching, and dig sees an authoritative server.
func TestZoneBehindStrictResolver(t *testing.T) {
	RequireTools(t, "unbound", "dig")
	zone, err := proxy.ServeZone("127.0.0.1:0", "b.example", []proxy.Record{
		{Service: proxy.ProxyService, Addr: "127.0.0.2:7000", Priority: 10, Weight: 100},
		{Service: proxy.BundleService, Addr: "127.0.0.2:7443", Priority: 10, Weight: 100},
	}, 30)
	if err != nil {
		t.Fatal(err)
	}
	defer zone.Close()
	zoneHost, zonePort, _ := strings.Cut(zone.Addr, ":")

	dir := t.TempDir()
	port := FreePort(t)
	conf := filepath.Join(dir, "unbound.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`server:
    interface: 127.0.0.1
    port: %d
    do-daemonize: no
    chroot: ""
    username: ""
    directory: %q
    pidfile: %q
    use-syslog: no
    logfile: ""
    verbosity: 1
    do-ip6: no
    do-not-query-localhost: no
    access-control: 127.0.0.0/8 allow
    module-config: "iterator"
    qname-minimisation: yes
    qname-minimisation-strict: yes
    harden-below-nxdomain: yes
    minimal-responses: no
stub-zone:
    name: "b.example"
    stub-addr: %s@%s
`, port, dir, filepath.Join(dir, "unbound.pid"), zoneHost, zonePort)), 0o600)
	startProcess(t, "unbound", exec.Command("unbound", "-d", "-c", conf))
	resolver := "@127.0.0.1"
	at := fmt.Sprintf("-p%d", port)
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := exec.Command("dig", "+time=1", "+tries=1", resolver, at, "b.example.", "SOA").CombinedOutput()
		if err == nil && strings.Contains(string(out), "status: NOERROR") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("unbound did not answer within 20 s:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}

	srv := dig(t, resolver, at, "_vwire._tcp.b.example.", "SRV")
	if !strings.Contains(srv, "status: NOERROR") || !strings.Contains(srv, "SRV\t10 100 7000 vwire-0.b.example.") {
		t.Errorf("SRV through unbound:\n%s", srv)
	}
	a := dig(t, resolver, at, "vwire-0.b.example.", "A")
	if !strings.Contains(a, "127.0.0.2") {
		t.Errorf("the SRV target's address through unbound:\n%s", a)
	}
	if out := dig(t, resolver, at, "_tcp.b.example.", "A"); !strings.Contains(out, "status: NOERROR") || !strings.Contains(out, "ANSWER: 0") {
		t.Errorf("an empty non-terminal through unbound (want NODATA):\n%s", out)
	}
	if out := dig(t, resolver, at, "nothing.b.example.", "A"); !strings.Contains(out, "status: NXDOMAIN") || !strings.Contains(out, "IN\tSOA\tns.b.example. hostmaster.b.example.") {
		t.Errorf("a missing name through unbound (want NXDOMAIN with the SOA):\n%s", out)
	}

	// Straight to the zone, as its operator would check it.
	direct := dig(t, "@"+zoneHost, "-p"+zonePort, "+norec", "_vwire._tcp.b.example.", "SRV")
	if !strings.Contains(direct, "flags: qr aa") || !strings.Contains(direct, "ADDITIONAL SECTION") || !strings.Contains(direct, "vwire-0.b.example.\t30\tIN\tA\t127.0.0.2") {
		t.Errorf("dig at the zone:\n%s", direct)
	}
	if out := dig(t, "@"+zoneHost, "-p"+zonePort, "+norec", "b.example.", "NS"); !strings.Contains(out, "NS\tns.b.example.") {
		t.Errorf("the apex's NS:\n%s", out)
	}
}
