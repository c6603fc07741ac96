package kernel

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/vwire/vwire/gateway/dataplane"
)

// requireRoot fails under CI=true, and skips elsewhere, when the test
// cannot create network namespaces.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		if _, err := exec.LookPath("ip"); err == nil {
			return
		}
	}
	msg := "needs root and iproute2's ip to create network namespaces"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// namespace creates a throw-away network namespace and removes it after.
func namespace(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	name := "vwt-" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	return name
}

func ip(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %v: %v: %s", args, err, out)
	}
	return string(out)
}

// hostLinks are the names of the links in the test's own namespace.
func hostLinks(t *testing.T) []string {
	var links []struct{ Ifname string }
	if err := json.Unmarshal([]byte(ip(t, "-j", "link", "show")), &links); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Ifname)
	}
	slices.Sort(names)
	return names
}

func backend(t *testing.T) *Backend {
	t.Helper()
	b, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

func TestInjectConfigureRemove(t *testing.T) {
	requireRoot(t)
	ns, b := namespace(t), backend(t)
	before := hostLinks(t)
	end := dataplane.End{
		ID: "conn-1", NetNS: ns, Interface: "nsm0", MTU: 1420,
		Addrs:  []netip.Prefix{netip.MustParsePrefix("172.31.255.1/31")},
		Routes: []dataplane.Route{{Prefix: netip.MustParsePrefix("172.31.254.0/24"), Via: netip.MustParseAddr("172.31.255.0")}},
	}
	if err := b.Apply(context.Background(), end); err != nil {
		t.Fatal(err)
	}
	show := ip(t, "-n", ns, "addr", "show", "nsm0")
	if !strings.Contains(show, "inet 172.31.255.1/31") || !strings.Contains(show, "mtu 1420") || !strings.Contains(show, "UP") {
		t.Errorf("nsm0 in %s:\n%s", ns, show)
	}
	if r := ip(t, "-n", ns, "route", "show", "172.31.254.0/24"); !strings.Contains(r, "via 172.31.255.0 dev nsm0") {
		t.Errorf("route: %q", r)
	}
	// Applying again changes nothing; a changed end is brought to it.
	if err := b.Apply(context.Background(), end); err != nil {
		t.Fatalf("second apply: %v", err)
	}
	end.Addrs = []netip.Prefix{netip.MustParsePrefix("172.31.255.3/31")}
	end.Routes = nil
	end.MTU = 1380
	if err := b.Apply(context.Background(), end); err != nil {
		t.Fatal(err)
	}
	show = ip(t, "-n", ns, "addr", "show", "nsm0")
	if strings.Contains(show, "172.31.255.1/") || !strings.Contains(show, "172.31.255.3/31") || !strings.Contains(show, "mtu 1380") {
		t.Errorf("after the change:\n%s", show)
	}
	if r := ip(t, "-n", ns, "route", "show", "172.31.254.0/24"); r != "" {
		t.Errorf("a route left over: %q", r)
	}
	// List finds it as applied, as after a restart (a new backend).
	listed, err := backend(t).List(context.Background())
	if err != nil || len(listed) != 1 || listed[0].String() != end.String() {
		t.Fatalf("List: %v, %v\nwant %v", listed, err, end)
	}
	if err := b.Remove(context.Background(), end.ID); err != nil {
		t.Fatal(err)
	}
	if err := b.Remove(context.Background(), end.ID); err != nil {
		t.Errorf("removing a missing end: %v", err)
	}
	if after := hostLinks(t); !slices.Equal(before, after) {
		t.Errorf("links before %v, after %v", before, after)
	}
	if out, _ := exec.Command("ip", "-n", ns, "link", "show", "nsm0").CombinedOutput(); !strings.Contains(string(out), "does not exist") {
		t.Errorf("nsm0 left in the namespace: %s", out)
	}
}

// Bad input gets a clear error and leaves nothing behind.
func TestApplyRefusals(t *testing.T) {
	requireRoot(t)
	ns, b := namespace(t), backend(t)
	ip(t, "-n", ns, "link", "add", "nsm0", "type", "veth", "peer", "name", "other0")
	before := hostLinks(t)
	for _, tc := range []struct {
		end  dataplane.End
		want string
	}{
		{dataplane.End{ID: "c1", NetNS: "vwt-does-not-exist"}, `network namespace "vwt-does-not-exist"`},
		{dataplane.End{ID: "c2", NetNS: ns, Interface: "nsm0"}, `interface "nsm0" already exists in network namespace`},
		{dataplane.End{ID: "c3", NetNS: ns, Interface: "an-interface-name-too-long"}, "longer than 15"},
		{dataplane.End{ID: "c4", NetNS: ns, Interface: "nsm1", Addrs: []netip.Prefix{netip.MustParsePrefix("172.31.255.1/31")},
			Routes: []dataplane.Route{{Prefix: netip.MustParsePrefix("172.31.254.0/24"), Via: netip.MustParseAddr("192.0.2.1")}}}, "routes of nsm1"},
	} {
		err := b.Apply(context.Background(), tc.end)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.end, err, tc.want)
		}
	}
	if after := hostLinks(t); !slices.Equal(before, after) {
		t.Errorf("a refused apply left links: before %v, after %v", before, after)
	}
	if out := ip(t, "-n", ns, "link", "show"); strings.Contains(out, "nsm1") {
		t.Errorf("a refused apply left nsm1 in the namespace:\n%s", out)
	}
}

// An end whose workload half vanished (the namespace was recreated) is
// made again by the next Apply.
func TestApplyRepairsAVanishedHalf(t *testing.T) {
	requireRoot(t)
	ns, b := namespace(t), backend(t)
	end := dataplane.End{ID: "conn-r", NetNS: ns, Interface: "nsm0", MTU: 1400, Addrs: []netip.Prefix{netip.MustParsePrefix("172.31.255.5/31")}}
	if err := b.Apply(context.Background(), end); err != nil {
		t.Fatal(err)
	}
	ip(t, "-n", ns, "link", "del", "nsm0") // takes the host half too: a veth pair dies whole
	ip(t, "netns", "del", ns)
	ip(t, "netns", "add", ns)
	listed, _ := b.List(context.Background())
	if len(listed) != 0 {
		t.Fatalf("List after the pair died: %v", listed)
	}
	if err := b.Apply(context.Background(), end); err != nil {
		t.Fatal(err)
	}
	if show := ip(t, "-n", ns, "addr", "show", "nsm0"); !strings.Contains(show, "172.31.255.5/31") {
		t.Errorf("not repaired:\n%s", show)
	}
	b.Remove(context.Background(), end.ID)
}
