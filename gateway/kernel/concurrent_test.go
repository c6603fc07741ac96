package kernel

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/gateway/dataplane"
)

// Ends applied at once, as eight clients' set-ups are: each passes
// traffic, each has a routing table of its own, and List reports them
// all; ends that would hold the same address are programmed one after the
// other, so exactly one of them gets it and the others are refused, as
// they are one at a time.
func TestEndsAtOnce(t *testing.T) {
	e2e.RequireRoot(t, "ping")
	p := newGatewayPair(t)
	wA, wB := namespace(t), namespace(t)
	host := func(s string) []netip.Prefix {
		a := netip.MustParseAddr(s)
		return []netip.Prefix{netip.PrefixFrom(a, 32)}
	}
	const n = 8
	addrA := func(i int) string { return fmt.Sprintf("172.30.%d.1", i) }
	addrB := func(i int) string { return fmt.Sprintf("172.30.%d.2", i) }
	// One tunnel between the gateways carries every end.
	var devA, devB string
	for i := range n {
		id := fmt.Sprintf("at-once-%d", i)
		var portB int
		if err := Do(p.gB, func() (err error) {
			devB, portB, err = p.tB.Use(id, p.keyA.PublicKey(), netip.AddrPort{}, false, host(addrA(i)), 0)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if err := Do(p.gA, func() (err error) {
			devA, _, err = p.tA.Use(id, p.keyB.PublicKey(), netip.AddrPortFrom(netip.MustParseAddr("172.31.0.2"), uint16(portB)), false, host(addrB(i)), 0)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	end := func(id, ns, ifc, dev, addr, far string) dataplane.End {
		return dataplane.End{ID: id, NetNS: ns, Interface: ifc, MTU: 1420, Addrs: host(addr),
			WireGuard: &dataplane.WireGuard{Device: dev, Remote: host(far)}}
	}
	// all applies each of ends at once and returns their errors.
	all := func(b *Backend, ends []dataplane.End) []error {
		errs := make([]error, len(ends))
		var wg sync.WaitGroup
		for i, e := range ends {
			wg.Go(func() { errs[i] = b.Apply(context.Background(), e) })
		}
		wg.Wait()
		return errs
	}
	var client, server []dataplane.End
	for i := range n {
		id := fmt.Sprintf("at-once-%d", i)
		client = append(client, end(id, wA, fmt.Sprintf("c%d", i), devA, addrA(i), addrB(i)))
		server = append(server, end(id, wB, fmt.Sprintf("s%d", i), devB, addrB(i), addrA(i)))
	}
	for k, ends := range map[*Backend][]dataplane.End{p.bA: client, p.bB: server} {
		for i, err := range all(k, ends) {
			if err != nil {
				t.Fatalf("end %d: %v", i, err)
			}
		}
	}
	tables := map[int]string{}
	for _, e := range client {
		table, err := p.bA.tableOf(e.ID)
		if err != nil || table == 0 {
			t.Fatalf("end %s has no table (%v)", e.ID, err)
		}
		if other, ok := tables[table]; ok {
			t.Fatalf("ends %s and %s share routing table %d", other, e.ID, table)
		}
		tables[table] = e.ID
	}
	if listed, err := p.bA.List(context.Background()); err != nil || len(listed) != n {
		t.Fatalf("List: %d ends (%v), want %d", len(listed), err, n)
	}
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			out, err := exec.Command("ip", "netns", "exec", wA, "ping", "-c", "1", "-w", "4", addrB(i)).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "1 received") {
				t.Errorf("vWire %d: %v\n%s", i, err, out)
			}
		})
	}
	wg.Wait()

	// Six more ends, all asking for end 0's address on the gateway (from
	// a namespace of their own, so only the gateway's check can refuse
	// them), then rounds of six asking for one new address in one
	// namespace (a race lost now and then would show in one of them).
	wC := namespace(t)
	type clash struct {
		name string
		end  func(i int) dataplane.End
		held int // ends that may get it
	}
	clashes := []clash{{"end 0's address", func(i int) dataplane.End {
		return end(fmt.Sprintf("clash-%d", i), wC, fmt.Sprintf("x%d", i), devA, addrA(0), "172.29.0.2")
	}, 0}}
	for r := range 8 {
		clashes = append(clashes, clash{fmt.Sprintf("new address %d", r), func(i int) dataplane.End {
			return end(fmt.Sprintf("new-%d-%d", r, i), wC, fmt.Sprintf("y%d-%d", r, i), devA, fmt.Sprintf("172.29.%d.1", r+1), fmt.Sprintf("172.28.%d.%d", r, i+1))
		}, 1})
	}
	var won []string // the ends that got an address, removed at the end
	for _, tc := range clashes {
		var ends []dataplane.End
		for i := range 6 {
			ends = append(ends, tc.end(i))
		}
		got := 0
		for i, err := range all(p.bA, ends) {
			switch {
			case err == nil:
				got++
				won = append(won, ends[i].ID)
			case !strings.Contains(err.Error(), "is already held"):
				t.Errorf("%s: end %d: %v, want a refusal that says the address is held", tc.name, i, err)
			}
		}
		if got != tc.held {
			t.Errorf("%s: %d of 6 ends applied at once got it, want %d", tc.name, got, tc.held)
		}
		if out := ip(t, "-n", p.gA, "route", "show", "table", "main", "proto", "118"); strings.Count(out, tc.end(0).Addrs[0].Addr().String()+" ") != max(1, tc.held) {
			t.Errorf("%s: the gateway's routes to the address:\n%s", tc.name, out)
		}
	}

	for _, e := range client {
		if err := p.bA.Remove(context.Background(), e.ID); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range won {
		if err := p.bA.Remove(context.Background(), id); err != nil {
			t.Fatal(err)
		}
	}
	for _, e := range server {
		if err := p.bB.Remove(context.Background(), e.ID); err != nil {
			t.Fatal(err)
		}
	}
	p.bA.settle()
	if out := ip(t, "-n", p.gA, "rule", "show"); strings.Contains(out, "lookup 1000") {
		t.Errorf("rules left after every end was removed:\n%s", out)
	}
}

// BenchmarkApplyBeside: an IP end through a peer gateway's tunnel set up
// and removed, into a workload namespace and through a gateway that hold
// live such ends already (one, which keeps the tunnel, or 1,000: the
// scale benchmark's loaded set-ups, without the control plane). With
// -cpuprofile the kernel's time shows under the system calls that spent
// it.
func BenchmarkApplyBeside(b *testing.B) {
	e2e.RequireRoot(b)
	for _, live := range []int{1, 1000} {
		b.Run(fmt.Sprintf("live=%d", live), func(b *testing.B) {
			gw, wl := namespace(b), namespace(b)
			be := backendAt(b, gw)
			key, _ := wgtypes.GeneratePrivateKey()
			peer, _ := wgtypes.GeneratePrivateKey()
			tun := NewTunnels(key, 1420, slog.Default())
			b.Cleanup(tun.Close)
			be.WithTunnels(tun)
			end := func(i int) dataplane.End {
				a := netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1})
				far := netip.AddrFrom4([4]byte{10, 128 + byte(i>>8), byte(i), 1})
				return dataplane.End{ID: fmt.Sprintf("live-%d", i), NetNS: wl, Interface: fmt.Sprintf("l%d", i), MTU: 1420,
					Addrs:     []netip.Prefix{netip.PrefixFrom(a, 32)},
					WireGuard: &dataplane.WireGuard{Peer: peer.PublicKey().String(), Remote: []netip.Prefix{netip.PrefixFrom(far, 32)}}}
			}
			apply := func(e dataplane.End) {
				if err := Do(gw, func() error { return be.Apply(context.Background(), e) }); err != nil {
					b.Fatal(err)
				}
			}
			for i := range live {
				apply(end(i))
			}
			b.ResetTimer()
			for i := range b.N {
				e := end(2000 + i%2000)
				apply(e)
				if err := be.Remove(context.Background(), e.ID); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			be.settle()
		})
	}
}
