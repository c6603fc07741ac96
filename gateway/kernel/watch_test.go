package kernel

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/vwire/vwire/e2e"
	"github.com/vwire/vwire/gateway/dataplane"
)

// A namespace's watch holds what a full read finds, through every kind of
// change: addresses and routes added and deleted (two routes to one
// destination apart), a link's deletion taking its IPv4 routes without a
// word, a link moved out, a route replaced (what it replaced may stay
// behind: more, never less), and notifications lost to a full buffer. An
// overlap only the watch holds is read again before it is believed.
func TestWatchKeepsWhatTheNamespaceHolds(t *testing.T) {
	e2e.RequireRoot(t)
	ns, other := namespace(t), namespace(t)
	nsh, dumps, h := sockets(t, ns)
	run := func(cmds ...string) {
		t.Helper()
		for _, c := range cmds {
			ip(t, append([]string{"-n", ns}, strings.Fields(c)...)...)
		}
	}
	run("link add va type veth peer name vb", "link set va up", "link set vb up", "addr add 172.30.0.1/24 dev va")
	w, err := watch(nsh, dumps, gatewayWatchBuffer)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	names := func(hs []held) []string {
		var out []string
		for _, h := range hs {
			out = append(out, fmt.Sprintf("%s %s link %d", h.kind, h.as, h.link))
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	// same says whether the watch holds what a full read finds (exact:
	// nothing more either).
	same := func(step string, exact bool) {
		t.Helper()
		if err := w.sync(); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		full, err := holding(dumps, nil)
		if err != nil {
			t.Fatal(err)
		}
		got, want := names(slices.Collect(w.each(nil))), names(full)
		missing := slices.DeleteFunc(slices.Clone(want), func(s string) bool { return slices.Contains(got, s) })
		if len(missing) > 0 || (exact && !slices.Equal(got, want)) {
			t.Errorf("%s: the watch holds\n%s\na full read finds\n%s", step, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		// Its index finds each entry by an address inside it, and holds
		// nothing the watch dropped.
		for _, o := range full {
			a := o.p.Addr()
			if !slices.Contains(slices.Collect(w.meeting(netip.PrefixFrom(a, a.BitLen()), nil)), o) {
				t.Errorf("%s: the index does not find %s %s on link %d by %s", step, o.kind, o.as, o.link, a)
			}
		}
		indexed := 0
		for _, ks := range w.under {
			indexed += len(ks)
		}
		if n := len(slices.Collect(w.each(nil))); indexed != n {
			t.Errorf("%s: the index has %d entries, the watch %d", step, indexed, n)
		}
	}
	same("first read", true)
	run("addr add 10.9.0.1 peer 10.9.0.2/32 dev va", "addr add fd00::1/64 dev va nodad",
		"route add 10.1.0.0/16 via 172.30.0.254", "route add 10.1.0.0/16 via 172.30.0.253 metric 10",
		"route add 10.2.0.0/16 nexthop via 172.30.0.254 nexthop via 172.30.0.253", "route add unreachable 10.3.0.0/16",
		"route add fd01::/48 dev va", "route add fd01::/48 dev vb metric 7", "addr add 172.30.1.1/24 dev vb", "route add 10.4.0.0/16 dev vb")
	same("added", true)
	run("route del 10.1.0.0/16 via 172.30.0.254", "route del fd01::/48 dev va", "addr del 10.9.0.1 peer 10.9.0.2/32 dev va")
	same("deleted, one of two routes to a destination each", true)
	run("link add vc type veth peer name vd", "link set vc up", "addr add 172.30.2.1/24 dev vc", "route add 10.5.0.0/16 dev vc",
		"link del vc", "link set vb netns "+other)
	same("a link deleted, one moved out", true)
	run("route replace 10.4.0.0/16 dev va")
	same("a route replaced", false)
	if w.reads != 1 {
		t.Fatalf("%d full reads: the changes were not followed one by one", w.reads)
	}

	// Notifications lost: the watch reads everything again.
	if err := unix.SetsockoptInt(w.sub.GetFd(), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4096); err != nil {
		t.Fatal(err)
	}
	reads := w.reads
	var batch []string
	for i := range 200 {
		batch = append(batch, fmt.Sprintf("route add 10.6.%d.0/24 dev va", i))
	}
	run(batch...)
	same("200 routes past a full buffer", false)
	if w.reads != reads+1 {
		t.Errorf("%d full reads after notifications were lost, want 1", w.reads-reads)
	}
	if full, _ := holding(dumps, nil); len(slices.Collect(w.each(nil))) < 200 || len(full) < 200 {
		t.Fatalf("the watch holds %d, a full read %d", len(slices.Collect(w.each(nil))), len(full))
	}

	// What only the watch holds is read again before it counts; what the
	// namespace holds counts.
	stale := heldKey{route: true, p: netip.MustParsePrefix("10.7.0.0/16"), link: 1}
	w.add(stale)
	overlaps := func(p netip.Prefix) func(meeting) error {
		return func(meets meeting) error {
			for h := range meets(p) {
				if h.p.Overlaps(p) {
					return errors.New("overlaps " + h.as.String())
				}
			}
			return nil
		}
	}
	if err := w.check(nil, overlaps(netip.MustParsePrefix("10.7.1.1/32"))); err != nil {
		t.Errorf("a route the namespace does not hold: %v", err)
	}
	if w.have[stale] {
		t.Error("the stale route outlived a full read")
	}
	if err := w.check(nil, overlaps(netip.MustParsePrefix("10.6.1.1/32"))); err == nil || !strings.Contains(err.Error(), "10.6.1.0/24") {
		t.Errorf("a route the namespace holds: %v", err)
	}
	if err := w.check(ownLinks(h, "", "va"), overlaps(netip.MustParsePrefix("10.6.1.1/32"))); err != nil {
		t.Errorf("a route on a link skipped: %v", err)
	}
}

// A workload namespace is watched only while ends are set up in it: the
// watch follows the workload's own changes between two ends, a namespace
// made anew under the same name is read anew, and a namespace deleted with
// a vWire in it (a pod gone) takes the vWire's links with it once the
// watch has been idle for watchIdle (a watch keeps its namespace alive).
func TestWorkloadWatch(t *testing.T) {
	e2e.RequireRoot(t)
	b, gw := backend(t)
	ns := namespace(t)
	end := func(id, ifc, addr string) dataplane.End {
		return dataplane.End{ID: id, NetNS: ns, Interface: ifc, MTU: 1400, Addrs: []netip.Prefix{netip.MustParsePrefix(addr)}}
	}
	apply := func(e dataplane.End) error { return b.Apply(context.Background(), e) }
	if err := apply(end("w-1", "w1", "172.30.1.1/32")); err != nil {
		t.Fatal(err)
	}
	// The workload routes 172.30.2.0/24 itself, after the watch began.
	ip(t, "-n", ns, "link", "set", "lo", "up")
	ip(t, "-n", ns, "route", "add", "172.30.2.0/24", "dev", "lo")
	if err := apply(end("w-2", "w2", "172.30.2.9/32")); err == nil || !strings.Contains(err.Error(), "overlaps route 172.30.2.0/24") {
		t.Fatalf("an end inside the workload's own route, set up while its namespace is watched: %v", err)
	}
	// The namespace made anew under its name, with that route: the watch
	// of the one before does not count.
	ip(t, "netns", "del", ns)
	ip(t, "netns", "add", ns)
	ip(t, "-n", ns, "link", "set", "lo", "up")
	ip(t, "-n", ns, "route", "add", "172.30.3.0/24", "dev", "lo")
	if err := apply(end("w-3", "w3", "172.30.3.9/32")); err == nil || !strings.Contains(err.Error(), "overlaps route 172.30.3.0/24") {
		t.Fatalf("an end inside a route of the namespace made anew: %v", err)
	}
	if err := apply(end("w-4", "w4", "172.30.4.1/32")); err != nil {
		t.Fatal(err)
	}
	// The pod is gone: its namespace and w-4's links with it.
	ip(t, "netns", "del", ns)
	deadline := time.Now().Add(watchIdle + 10*time.Second)
	for slices.Contains(hostLinks(t, gw), hostName("w-4")) {
		if time.Now().After(deadline) {
			t.Fatalf("%s still in the gateway's namespace %v after its workload's namespace was deleted", hostName("w-4"), time.Since(deadline.Add(-watchIdle-10*time.Second)))
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.Remove(context.Background(), "w-1")
}

// The watches kept are bounded (maxWorkloadWatches): an end in a
// namespace past the bound is checked as well, by a watch that goes with
// it, and nothing of it stays open.
func TestWorkloadWatchesAreBounded(t *testing.T) {
	e2e.RequireRoot(t)
	defer func(n int) { maxWorkloadWatches = n }(maxWorkloadWatches)
	maxWorkloadWatches = 2
	b, _ := backend(t)
	apply := func(id, ns, addr string) error {
		return b.Apply(context.Background(), dataplane.End{ID: id, NetNS: ns, Interface: "nsm0", MTU: 1400, Addrs: []netip.Prefix{netip.MustParsePrefix(addr)}})
	}
	for i := range 2 {
		if err := apply(fmt.Sprintf("kept-%d", i), namespace(t), fmt.Sprintf("172.30.%d.1/32", i)); err != nil {
			t.Fatal(err)
		}
	}
	fds := func() int {
		entries, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(entries)
	}
	before := fds()
	past := namespace(t)
	ip(t, "-n", past, "link", "set", "lo", "up")
	ip(t, "-n", past, "route", "add", "172.30.9.0/24", "dev", "lo")
	if err := apply("past", past, "172.30.9.9/32"); err == nil || !strings.Contains(err.Error(), "overlaps route 172.30.9.0/24") {
		t.Fatalf("an end inside the workload's own route, in a namespace past the bound: %v", err)
	}
	if err := apply("past", past, "172.30.8.1/32"); err != nil {
		t.Fatal(err)
	}
	b.workloads.mu.Lock()
	kept := len(b.workloads.m)
	b.workloads.mu.Unlock()
	if kept != 2 {
		t.Errorf("%d workload namespaces' watches kept, the bound is 2", kept)
	}
	if after := fds(); after != before {
		t.Errorf("%d descriptors open after two ends in a namespace past the bound, %d before", after, before)
	}
	for _, id := range []string{"kept-0", "kept-1", "past"} {
		b.Remove(context.Background(), id)
	}
}

// Only the kernel speaks for a namespace: a message sent to the watch's
// socket by another socket there (a workload with CAP_NET_ADMIN in its
// own namespace can send one) is dropped. A forged deletion once made the
// watch hold less than the namespace, and an overlap go unseen.
func TestWatchTakesOnlyTheKernelsWord(t *testing.T) {
	e2e.RequireRoot(t)
	ns := namespace(t)
	nsh, dumps, _ := sockets(t, ns)
	ip(t, "-n", ns, "link", "add", "va", "type", "veth", "peer", "name", "vb")
	ip(t, "-n", ns, "link", "set", "va", "up")
	ip(t, "-n", ns, "route", "add", "10.8.0.0/16", "dev", "va")
	w, err := watch(nsh, dumps, gatewayWatchBuffer)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.sync(); err != nil {
		t.Fatal(err)
	}
	route := netip.MustParsePrefix("10.8.0.0/16")
	holds := func() bool {
		return slices.ContainsFunc(slices.Collect(w.each(nil)), func(h held) bool { return h.p == route })
	}
	if !holds() {
		t.Fatal("the watch does not hold 10.8.0.0/16 after its first read")
	}
	// The kernel's own notification of that route, as a deletion, from
	// another socket in the namespace to the watch's.
	sa, err := unix.Getsockname(w.sub.GetFd())
	if err != nil {
		t.Fatal(err)
	}
	var forged []byte
	if err := Do(ns, func() error {
		va, err := netlink.LinkByName("va")
		if err != nil {
			return err
		}
		req := nl.NewNetlinkRequest(unix.RTM_DELROUTE, 0)
		req.AddData(&nl.RtMsg{RtMsg: unix.RtMsg{Family: unix.AF_INET, Dst_len: 16, Table: unix.RT_TABLE_MAIN,
			Protocol: unix.RTPROT_BOOT, Scope: unix.RT_SCOPE_LINK, Type: unix.RTN_UNICAST}})
		req.AddData(nl.NewRtAttr(unix.RTA_TABLE, nl.Uint32Attr(unix.RT_TABLE_MAIN)))
		req.AddData(nl.NewRtAttr(unix.RTA_DST, route.Addr().AsSlice()))
		req.AddData(nl.NewRtAttr(unix.RTA_OIF, nl.Uint32Attr(uint32(va.Attrs().Index))))
		forged = req.Serialize()
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_ROUTE)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, forged, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: sa.(*unix.SockaddrNetlink).Pid})
	}); err != nil {
		t.Fatal(err)
	}
	if k, ok, err := parseHeld(unix.RTM_DELROUTE, forged[unix.SizeofNlMsghdr:]); err != nil || !ok || !w.have[k] {
		t.Fatalf("the forged message is not the deletion of the route the watch holds (%v, %v, %v)", k, ok, err)
	}
	if err := w.sync(); err != nil {
		t.Fatal(err)
	}
	if !holds() {
		t.Error("a message from another socket deleted 10.8.0.0/16 from the watch; the namespace still has it")
	}
}
