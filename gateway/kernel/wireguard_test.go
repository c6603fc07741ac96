package kernel

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// inNetNS runs fn on a thread in network namespace ns, as a gateway
// running in that namespace would.
func inNetNS(t *testing.T, ns string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // the thread dies with the goroutine: never reused in ns
		target, err := netns.GetFromName(ns)
		if err != nil {
			t.Error(err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			t.Error(err)
			return
		}
		fn()
	}()
	<-done
}

// Two gateways in two namespaces, joined by a veth as by a network, get a
// WireGuard tunnel each (embedded wireguard-go here: the kernel has no
// module) and a workload address behind it: ping crosses the tunnel.
func TestWireGuardBetweenGateways(t *testing.T) {
	requireRoot(t)
	nsA, nsB := namespace(t), namespace(t)
	ip(t, "link", "add", "vwt-a", "netns", nsA, "type", "veth", "peer", "name", "vwt-b", "netns", nsB)
	ip(t, "-n", nsA, "addr", "add", "172.31.0.1/30", "dev", "vwt-a")
	ip(t, "-n", nsB, "addr", "add", "172.31.0.2/30", "dev", "vwt-b")
	ip(t, "-n", nsA, "link", "set", "vwt-a", "up")
	ip(t, "-n", nsB, "link", "set", "vwt-b", "up")

	type gw struct {
		ns, underlay, tunnel string
		key                  wgtypes.Key
		dev                  *WireGuard
	}
	gws := []*gw{{ns: nsA, underlay: "172.31.0.1", tunnel: "100.64.0.1"}, {ns: nsB, underlay: "172.31.0.2", tunnel: "100.64.0.2"}}
	for i, g := range gws {
		g.key, _ = wgtypes.GeneratePrivateKey()
		name := fmt.Sprintf("wgt%d%s", i, g.ns[len(g.ns)-4:]) // unique on the machine
		inNetNS(t, g.ns, func() {
			var err error
			if g.dev, err = NewWireGuard(name, g.key, 51820, 1420, slog.Default()); err != nil {
				t.Error(err)
			}
		})
		if g.dev == nil {
			t.FailNow()
		}
		t.Cleanup(func() { g.dev.Close() })
		ip(t, "-n", g.ns, "addr", "add", g.tunnel+"/32", "dev", name)
	}
	for i, g := range gws {
		peer := gws[1-i]
		err := g.dev.SetPeer(peer.key.PublicKey(), netip.MustParseAddrPort(peer.underlay+":51820"), []netip.Prefix{netip.MustParsePrefix(peer.tunnel + "/32")})
		if err != nil {
			t.Fatal(err)
		}
		ip(t, "-n", g.ns, "route", "add", peer.tunnel+"/32", "dev", g.dev.Name)
	}
	if !gws[0].dev.Userspace {
		t.Log("the kernel has a WireGuard module: testing it, not wireguard-go")
	}
	out, err := exec.Command("ip", "netns", "exec", nsA, "ping", "-c", "2", "-W", "2", "100.64.0.2").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "2 received") {
		t.Fatalf("ping across the tunnel: %v\n%s", err, out)
	}
	if pub, err := gws[0].dev.PublicKey(); err != nil || pub != gws[0].key.PublicKey() {
		t.Errorf("wgctrl reports key %v, %v", pub, err)
	}
}
