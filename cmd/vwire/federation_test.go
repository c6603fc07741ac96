package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/federation"
)

// Two `vwire domain` processes federate with one command each, list each
// other with a fetched bundle, and rotate a CA from the command line.
func TestFederationCommands(t *testing.T) {
	dir := t.TempDir()
	type dom struct {
		name, addr, bundleAddr, data string
		proc                         *e2e.Process
	}
	doms := []*dom{{name: "a.example"}, {name: "b.example"}}
	for _, d := range doms {
		d.addr, d.bundleAddr, d.data = freeAddr(t), freeAddr(t), filepath.Join(dir, d.name)
		d.proc = e2e.StartVwire(t, vwireBin, nil, "domain", "--name", d.name, "--data-dir", d.data, "--listen", d.addr, "--bundle-listen", d.bundleAddr,
			"--bundle-refresh-hint", "1s", "--ca-rotation-propagation", "2s", "--ca-rotation-overlap", "2s")
	}
	creds := func(d *dom) []string {
		return []string{"--registry", d.addr, "--credentials", filepath.Join(d.data, "admin")}
	}
	for i, d := range doms {
		peer := doms[1-i]
		bundle := filepath.Join(dir, peer.name+".bundle")
		os.WriteFile(bundle, []byte(vwire(t, true, append([]string{"federation", "bundle"}, creds(peer)...)...)), 0o644)
		// As an admin runs it in the domain's container (or pod), whose
		// environment describes the domain itself.
		add := exec.Command(vwireBin, append([]string{"federation", "add", peer.name, "--bundle-endpoint", "https://" + peer.bundleAddr, "--bundle", bundle}, creds(d)...)...)
		add.Env = append(os.Environ(), "VWIRE_NAME="+d.name, "VWIRE_TRUST_DOMAIN="+d.name, "VWIRE_BUNDLE_ENDPOINT=https://127.0.0.1:1")
		b, err := add.CombinedOutput()
		out := string(b)
		if err != nil {
			t.Fatalf("vwire federation add %s in %s's environment: %v\n%s", peer.name, d.name, err, out)
		}
		if !strings.Contains(out, "federating with "+peer.name+" (trust domain "+peer.name) {
			t.Errorf("federation add printed %q", out)
		}
	}
	type row struct {
		Domain, TrustDomain, LastFetched, LastError, Source string
		Authorities                                         int
	}
	list := func(d *dom) []row {
		var rows []row
		out := vwire(t, true, append([]string{"federation", "list", "-o", "json"}, creds(d)...)...)
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		return rows
	}
	for i, d := range doms {
		waitUntil(t, d.name+" fetched its peer's bundle", func() bool {
			rows := list(d)
			return len(rows) == 1 && rows[0].Domain == doms[1-i].name && rows[0].LastFetched != "" && rows[0].LastError == "" &&
				rows[0].Source == federation.FromBundleEndpoint && rows[0].Authorities == 1
		})
	}
	if table := vwire(t, true, append([]string{"federation", "list"}, creds(doms[0])...)...); !strings.Contains(table, "b.example") || !strings.Contains(table, " ago") {
		t.Errorf("federation list table:\n%s", table)
	}

	// a rotates; b sees a's second root, then only the new one.
	if out := vwire(t, true, append([]string{"ca", "rotate"}, creds(doms[0])...)...); !strings.Contains(out, "new root published") {
		t.Errorf("ca rotate printed %q", out)
	}
	waitUntil(t, "b follows a's new root", func() bool { return list(doms[1])[0].Authorities == 2 })
	waitUntil(t, "a retires its old root", func() bool { return list(doms[1])[0].Authorities == 1 })
	// The admin credentials were rewritten with the new root.
	vwire(t, true, append([]string{"federation", "list"}, creds(doms[0])...)...)

	// Bad input says what is wrong.
	if out := vwire(t, false, append([]string{"federation", "add", "c.example", "--bundle-endpoint", "https://127.0.0.1:1", "--bundle", filepath.Join(dir, "a.example.bundle")}, creds(doms[1])...)...); !strings.Contains(out, `belongs to trust domain "a.example"`) {
		t.Errorf("a's bundle offered as c's: %s", out)
	}
	if out := vwire(t, false, append([]string{"federation", "add", "C_x", "--bundle-endpoint", "https://x", "--bundle", filepath.Join(dir, "a.example.bundle")}, creds(doms[1])...)...); !strings.Contains(out, `"C_x"`) {
		t.Errorf("bad domain: %s", out)
	}
	if out := vwire(t, false, append([]string{"federation", "remove", "z.example"}, creds(doms[1])...)...); !strings.Contains(out, "NotFound") {
		t.Errorf("removing an unknown peer: %s", out)
	}
	// A bundle endpoint over plain http is refused, and nothing is stored.
	caC, err := federation.OpenCA(filepath.Join(dir, "c-ca"), spiffeid.RequireTrustDomainFromString("c.example"))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := spiffebundle.FromX509Bundle(caC.Bundle()).Marshal()
	os.WriteFile(filepath.Join(dir, "c.bundle"), raw, 0o644)
	out := vwire(t, false, append([]string{"federation", "add", "c.example", "--bundle-endpoint", "http://127.0.0.1:1", "--bundle", filepath.Join(dir, "c.bundle")}, creds(doms[1])...)...)
	if !strings.Contains(out, `InvalidArgument: bad peer: bundle endpoint "http://127.0.0.1:1": the scheme must be https, not "http"`) {
		t.Errorf("an http bundle endpoint: %s", out)
	}
	// So is a second domain for a trust domain that speaks for a peer.
	out = vwire(t, false, append([]string{"federation", "add", "c.example", "--trust-domain", "a.example", "--bundle-endpoint", "https://" + doms[0].bundleAddr,
		"--bundle", filepath.Join(dir, "a.example.bundle")}, creds(doms[1])...)...)
	if !strings.Contains(out, `trust domain "a.example" already speaks for "a.example"`) {
		t.Errorf("a second peer of a.example's trust domain: %s", out)
	}
	if rows := list(doms[1]); len(rows) != 1 || rows[0].Domain != "a.example" {
		t.Errorf("after the refusals, b lists %+v", rows)
	}

	// The audit trail: each administrative action, with its caller.
	for _, want := range []struct {
		d     *dom
		parts []string
	}{
		{doms[0], []string{`msg="audit: administrative action"`, `action="federation add"`, `target="domain b.example, bundle endpoint https://`, `caller=spiffe://a.example/vwire/admin`}},
		{doms[0], []string{`msg="audit: administrative action"`, `action="ca rotate"`, `caller=spiffe://a.example/vwire/admin`}},
		{doms[1], []string{`msg="audit: administrative action refused or failed"`, `action="federation remove"`, `target="domain z.example"`, `caller=spiffe://b.example/vwire/admin`, `code=NotFound`}},
		{doms[1], []string{`msg="audit: administrative action refused or failed"`, `action="federation add"`, `target="domain c.example`, `code=InvalidArgument`}},
	} {
		if line := want.d.proc.WaitFor(5*time.Second, want.parts...); line == "" {
			t.Errorf("%s's log has no line with %q", want.d.name, want.parts)
		}
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("not within 30s: %s", what)
}
