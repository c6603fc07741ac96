package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The interdomain issue's "done when" with a DNS server not written here:
// two domains (a `vwire domain`, and a `vwire proxy` on an external etcd)
// publish their records into an etcd that a
// real CoreDNS serves (its etcd plugin), federate, and a answers
// `vwire get endpoints --service secure-intranet-connectivity@b.example
// --source-labels app=firewall` with b's vpn-gateway endpoint. When b is
// killed, its records lapse with their lease and a says b is unknown.
func TestCoreDNSDiscovery(t *testing.T) {
	if testing.Short() {
		t.Skip("runs etcd, CoreDNS and two vwire domains")
	}
	etcdBin, corednsBin := ToolPath(t, "etcd"), ToolPath(t, "coredns")
	dir := t.TempDir()
	vwireBin := buildVwire(t, dir)

	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", FreePort(t))
	startProcess(t, "etcd", exec.Command(etcdBin, "--name", "dns", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "dns="+peerURL, "--log-level", "error"))

	dnsPort := FreePort(t)
	corefile := filepath.Join(dir, "Corefile")
	os.WriteFile(corefile, []byte(fmt.Sprintf(`.:%d {
    bind 127.0.0.1
    etcd a.example b.example {
        path /skydns
        endpoint %s
    }
    errors
}
`, dnsPort, etcdURL)), 0o600)
	startProcess(t, "coredns", exec.Command(corednsBin, "-conf", corefile))
	dnsServer := fmt.Sprintf("127.0.0.1:%d", dnsPort)

	type dom struct{ name, addr, bundleAddr, data string }
	a := &dom{name: "a.example"}
	b := &dom{name: "b.example"}
	procs := map[string]*Process{}
	for _, d := range []*dom{a, b} {
		d.addr, d.bundleAddr, d.data = fmt.Sprintf("127.0.0.1:%d", FreePort(t)), fmt.Sprintf("127.0.0.1:%d", FreePort(t)), filepath.Join(dir, d.name)
		// a runs as one process with its embedded etcd; b as a proxy on the
		// external etcd (which also holds the DNS records).
		role := []string{"domain"}
		if d == b {
			role = []string{"proxy", "--etcd-endpoints", etcdURL}
		}
		procs[d.name] = StartVwire(t, vwireBin, nil, append(role, "--name", d.name, "--data-dir", d.data, "--listen", d.addr,
			"--bundle-listen", d.bundleAddr, "--dns-server", dnsServer,
			"--publish-dns", "etcd", "--dns-etcd-endpoints", etcdURL, "--dns-ttl", "2s")...)
	}
	cli := func(d *dom, wantOK bool, args ...string) string {
		t.Helper()
		out, err := exec.Command(vwireBin, append(args, "--registry", d.addr, "--credentials", filepath.Join(d.data, "admin"))...).CombinedOutput()
		if (err == nil) != wantOK {
			t.Fatalf("vwire %v on %s: %v\n%s", args, d.name, err, out)
		}
		return string(out)
	}
	for _, pair := range [][2]*dom{{a, b}, {b, a}} {
		d, peer := pair[0], pair[1]
		bundle := filepath.Join(dir, peer.name+".bundle")
		os.WriteFile(bundle, []byte(cli(peer, true, "federation", "bundle")), 0o600)
		cli(d, true, "federation", "add", peer.name, "--bundle-endpoint", "https://"+peer.bundleAddr, "--bundle", bundle)
	}
	cli(b, true, "apply", "-f", "../registry/testdata/secure-intranet-connectivity.yaml")
	cli(b, true, "apply", "-f", "../registry/testdata/endpoints.yaml")

	out := cli(a, true, "get", "endpoints", "--service", "secure-intranet-connectivity@b.example", "--source-labels", "app=firewall")
	if !strings.Contains(out, "vpn-gateway-1@b.example") || strings.Contains(out, "firewall-1") {
		t.Fatalf("a's firewall client selects, through CoreDNS and b's proxy:\n%s", out)
	}
	out = cli(a, true, "get", "endpoints", "--service", "secure-intranet-connectivity@b.example", "--source-labels", "app=web")
	if !strings.Contains(out, "firewall-1@b.example") {
		t.Fatalf("any other client:\n%s", out)
	}

	// b dies without a word: its lease lapses, CoreDNS stops answering for
	// it, and a says so.
	procs["b.example"].Cmd.Process.Signal(syscall.SIGKILL)
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := exec.Command(vwireBin, "get", "endpoints", "--service", "secure-intranet-connectivity@b.example",
			"--registry", a.addr, "--credentials", filepath.Join(a.data, "admin")).CombinedOutput()
		if err != nil && strings.Contains(string(out), `unknown domain "b.example"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("20s after b's death a still says: %v\n%s", err, out)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
