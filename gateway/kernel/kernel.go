// Package kernel is the gateway's Linux data-plane backend: vWire ends as
// veth pairs through netlink, one half injected into the workload's network
// namespace with the connection's addresses, routes and MTU. Everything it
// makes is tagged with the connection id (interface aliases, a route
// protocol), so List finds it after a restart and Remove leaves nothing.
package kernel

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/vwire/vwire/gateway/dataplane"
)

const (
	aliasPrefix = "vwire:"
	// rulePriority is where the per-end policy-routing rules sit.
	rulePriority = 20000
	// routeProtocol marks the routes vwire sets (rtnetlink protocol
	// numbers above 4 are free for routing daemons; 0x76 is 'v').
	routeProtocol netlink.RouteProtocol = 0x76
)

// Backend programs vWire ends in the kernel. It works from the network
// namespace it was created in (the gateway's).
type Backend struct {
	// gate keeps what must see the gateway with no end half made apart
	// from the changes: routed and tunnelled veth ends are applied, and
	// ends removed, under its read lock, at once (claims keep the ends
	// that could meet apart); List, Close and the Ethernet and bridged
	// ends (which share bridges and a tunnel's inner routes) take it
	// whole.
	gate sync.RWMutex
	// mu guards claims and removing, and is never held across a netlink
	// round trip.
	mu sync.Mutex
	// claims has the ends being applied, by id: an end that could meet
	// one (see busy.meets) waits for it, then checks the kernel.
	claims map[string]*busy
	// tmu guards tables and clamped.
	tmu  sync.Mutex
	host *netlink.Handle
	// routes reads the gateway's routes (see strict), host the rest:
	// the kernel refuses rule and neighbour dumps on a strict socket.
	routes  *netlink.Handle
	dumps   *nl.SocketHandle // addresses and routes, read lean (dumpSocket)
	watch   *watched         // what the namespace holds, for overlap checks
	tunnels *Tunnels         // the WireGuard devices of ends that name a Peer
	// workloads watches the workload namespaces ends were set up in
	// lately, for their overlap checks.
	workloads workloads
	// forwarding turns on IPv4 forwarding in the gateway's namespace
	// before the first routed end, and forwarding6 IPv6's before the first
	// with IPv6 addresses (nil for NewAt: a test's namespace).
	forwarding, forwarding6 func() error
	// clamped says the MSS clamping table is in place: installed before
	// the first routed end, kept while the gateway runs (installing it
	// takes some 10 ms, a vWire's whole set-up), removed on Close when no
	// end is left.
	clamped bool
	// tables is each gateway half's routing table as its rules say, read
	// once and kept as the backend adds and removes rules (nil: not read
	// yet): a thousand ends' rules are not listed for each change.
	tables map[string]int
	nsFD   int // the gateway's namespace for nftables; -1: the process's
	// removing has the ends whose links the kernel is deleting in the
	// background (Remove), by id; pending counts them for Close.
	removing map[string]*busy
	pending  sync.WaitGroup
}

var _ dataplane.Backend = (*Backend)(nil)

// New returns a backend for the current network namespace.
func New() (*Backend, error) {
	b, err := open(netns.None())
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	b.forwarding = enable("/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward")
	b.forwarding6 = enable("/proc/sys/net/ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding")
	return b, nil
}

// open returns a backend with its netlink sockets in namespace nsh
// (netns.None(): the thread's own).
func open(nsh netns.NsHandle) (b *Backend, err error) {
	b = &Backend{nsFD: -1, removing: map[string]*busy{}, claims: map[string]*busy{}}
	defer func() {
		if err != nil {
			b.closeSockets()
		}
	}()
	if b.host, err = netlink.NewHandleAt(nsh); err != nil {
		return nil, err
	}
	if b.routes, err = strict(netlink.NewHandleAt(nsh)); err != nil {
		return nil, err
	}
	if b.dumps, err = dumpSocket(nsh); err != nil {
		return nil, err
	}
	if b.watch, err = watch(nsh, b.dumps, gatewayWatchBuffer); err != nil {
		return nil, err
	}
	return b, nil
}

// closeSockets closes the netlink sockets of b that are open.
func (b *Backend) closeSockets() {
	if b.host != nil {
		b.host.Close()
	}
	if b.routes != nil {
		b.routes.Close()
	}
	if b.dumps != nil {
		b.dumps.Close()
	}
	if b.watch != nil {
		b.watch.Close()
	}
}

// enable sets sysctl key (at path) to 1, once, unless it is 1 already: in
// a container /proc/sys is read-only, and the deployment sets it instead.
func enable(path, key string) func() error {
	return sync.OnceValue(func() error {
		if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) == "1" {
			return nil
		}
		if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("%w (in a container, set it where it starts: docker run --sysctl %s=1, or sysctls in compose)", err, key)
		}
		return nil
	})
}

// clamp installs the MSS clamping table if it is not in place; a kernel
// without nftables gets a warning, not a refusal: the vWires' own ends
// have the right MTU.
func (b *Backend) clamp() {
	b.tmu.Lock()
	defer b.tmu.Unlock()
	if b.clamped {
		return
	}
	if err := clampMSS(b.nsFD); err != nil {
		slog.Warn("TCP MSS is not clamped on this gateway: hosts behind a workload with larger links may stall", "err", err)
		return
	}
	b.clamped = true
}

// unclamp removes the MSS clamping table if no gateway half is left
// (also one that a killed gateway left behind); b.gate is held whole.
func (b *Backend) unclamp() {
	links, err := dump(func() ([]netlink.Link, error) { return b.host.LinkList() })
	if err != nil {
		return
	}
	for _, l := range links {
		if _, _, ok := parseHostAlias(l.Attrs().Alias); ok {
			return
		}
	}
	if err := unclampMSS(b.nsFD); err != nil && b.clamped {
		slog.Warn("removing the MSS clamping table", "err", err)
		return
	}
	b.clamped = false
}

// WithTunnels has the backend keep the WireGuard devices of ends that name
// a peer gateway's key in t (whose devices live in the namespace of the
// thread that creates them: the gateway's own).
func (b *Backend) WithTunnels(t *Tunnels) *Backend {
	b.tunnels = t
	return b
}

var _ dataplane.Tunneler = (*Backend)(nil)

// PublicKey implements dataplane.Tunneler.
func (b *Backend) PublicKey() string {
	if b.tunnels == nil {
		return ""
	}
	return b.tunnels.PublicKey().String()
}

// Handshake implements dataplane.Tunneler.
func (b *Backend) Handshake(id string) time.Time {
	if b.tunnels == nil {
		return time.Time{}
	}
	return b.tunnels.Handshake(id)
}

// PeerEndpoint implements dataplane.Tunneler.
func (b *Backend) PeerEndpoint(id string) netip.AddrPort {
	if b.tunnels == nil {
		return netip.AddrPort{}
	}
	return b.tunnels.PeerEndpoint(id)
}

// ListenPort implements dataplane.Tunneler.
func (b *Backend) ListenPort(id string) int {
	if b.tunnels == nil {
		return 0
	}
	return b.tunnels.ListenPort(id)
}

// NewAt returns a backend for the gateway network namespace ns (a name
// or path), as for a gateway that runs in it.
func NewAt(ns string) (*Backend, error) {
	nsh, err := OpenNS(ns)
	if err != nil {
		return nil, err
	}
	b, err := open(nsh)
	if err != nil {
		nsh.Close()
		return nil, fmt.Errorf("netlink in network namespace %q: %w", ns, err)
	}
	b.nsFD = int(nsh)
	return b, nil
}

// strict has the kernel filter h's route and address dumps by what they
// ask for (table, output link, protocol; link) instead of sending every
// route of every end for the library to filter: at a thousand vWires, a
// dump of one end's table is otherwise a dump of six thousand routes.
// Rule and neighbour dumps are refused on such a socket.
func strict(h *netlink.Handle, err error) (*netlink.Handle, error) {
	if err != nil {
		return nil, err
	}
	if err := h.SetStrictCheck(true); err != nil {
		h.Close()
		return nil, fmt.Errorf("strict checking: %w", err)
	}
	return h, nil
}

// nsSockets are a workload namespace, open, with a netlink handle (strict:
// no rule or neighbour dumps) and a dumpSocket in it.
type nsSockets struct {
	nsh   netns.NsHandle
	h     *netlink.Handle
	dumps *nl.SocketHandle
}

// openIn opens namespace ns (a name or path) and its sockets.
func openIn(ns string) (in *nsSockets, err error) {
	in = &nsSockets{}
	if in.nsh, err = OpenNS(ns); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			in.Close()
		}
	}()
	if in.h, err = strict(netlink.NewHandleAt(in.nsh, unix.NETLINK_ROUTE)); err != nil {
		return nil, fmt.Errorf("network namespace %q: %w", ns, err)
	}
	if in.dumps, err = dumpSocket(in.nsh); err != nil {
		return nil, fmt.Errorf("network namespace %q: %w", ns, err)
	}
	return in, nil
}

// Close closes what is open of in.
func (in *nsSockets) Close() {
	if in.dumps != nil {
		in.dumps.Close()
	}
	if in.h != nil {
		in.h.Close()
	}
	in.nsh.Close()
}

// handleIn is a netlink handle for namespace ns (a name or path).
func handleIn(ns string) (*netlink.Handle, error) {
	nsh, err := OpenNS(ns)
	if err != nil {
		return nil, err
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return nil, fmt.Errorf("netlink in network namespace %q: %w", ns, err)
	}
	return h, nil
}

// hostName is the gateway-side veth of end id: short enough for IFNAMSIZ
// and the same after a restart.
func hostName(id string) string { return hostPrefix + digest(id) }

// hostPrefix begins the name of every gateway half.
const hostPrefix = "vw"

// gatewayIP and gatewayIP6 are the gateway half's addresses on every IP
// end that leaves through WireGuard or is routed: the workload's next hop
// for the far side, by family.
var (
	gatewayIP  = netip.MustParseAddr("169.254.0.1")
	gatewayIP6 = netip.MustParseAddr("fe80::1")
)

// gateways are the gateway half's addresses a routed end needs: IPv4's
// always (what a routed end has always had, and what List expects), and
// IPv6's if the end's own or far addresses are IPv6.
func gateways(e dataplane.End) []netip.Addr {
	far := e.Routed
	if e.WireGuard != nil {
		far = e.WireGuard.Remote
	}
	for _, p := range append(slices.Clone(e.Addrs), far...) {
		if p.Addr().Is6() {
			return []netip.Addr{gatewayIP, gatewayIP6}
		}
	}
	return []netip.Addr{gatewayIP}
}

// family is a's netlink address family.
func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// address is p as an interface address; an IPv6 one skips duplicate
// address detection: on a vWire's link of two it cannot clash, and the
// workload uses it at once.
func address(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// gatewayOf is the gateway half's address in a's family.
func gatewayOf(a netip.Addr) netip.Addr {
	if a.Is4() {
		return gatewayIP
	}
	return gatewayIP6
}

// tableBase is the first routing table the backend gives an end: each
// routed end through WireGuard gets the lowest one no end's rule holds.
// (Tables were once a hash of the end's id, and two ends whose hashes met
// shared one: removing either took the other's routes.)
const tableBase = 1_000_000

// endTables maps each gateway half that has a policy rule to its table.
func endTables(rules []netlink.Rule) map[string]int {
	tables := map[string]int{}
	for _, r := range rules {
		if r.Priority == rulePriority && r.IifName != "" {
			tables[r.IifName] = r.Table
		}
	}
	return tables
}

// tableOf is the routing table of end id's policy rule (0: it has none).
func (b *Backend) tableOf(id string) (int, error) {
	rules, err := dump(func() ([]netlink.Rule, error) { return b.host.RuleList(netlink.FAMILY_ALL) })
	if err != nil {
		return 0, fmt.Errorf("listing the policy rules: %w", err)
	}
	return endTables(rules)[hostName(id)], nil
}

// tablesLocked is each gateway half's table (see Backend.tables); b.tmu
// is held.
func (b *Backend) tablesLocked() (map[string]int, error) {
	if b.tables == nil {
		rules, err := dump(func() ([]netlink.Rule, error) { return b.host.RuleList(netlink.FAMILY_ALL) })
		if err != nil {
			return nil, fmt.Errorf("listing the policy rules: %w", err)
		}
		b.tables = endTables(rules)
	}
	return b.tables, nil
}

// freeTable is the lowest table at or above tableBase that no end holds.
func freeTable(tables map[string]int) int {
	used := map[int]bool{}
	for _, t := range tables {
		used[t] = true
	}
	t := tableBase
	for used[t] {
		t++
	}
	return t
}

// bridgeName is the bridge of an Ethernet end between two workloads of
// one gateway; vxlanName the gateway-side VXLAN device of an Ethernet end
// as versions before the device moved into the workload's namespace made
// it (Remove still takes it away).
func vxlanName(id string) string  { return "vx" + digest(id) }
func bridgeName(id string) string { return "vb" + digest(id) }

func digest(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:6])
}

func hostAlias(e dataplane.End) string { return aliasPrefix + e.ID + ":" + e.NetNS }

func parseHostAlias(a string) (id, ns string, ok bool) {
	rest, ok := strings.CutPrefix(a, aliasPrefix)
	if !ok {
		return "", "", false
	}
	return strings.Cut(rest, ":")
}

// Do runs f on a thread inside network namespace ns (a name or a path; ""
// for the caller's own): sockets f opens stay in that namespace after Do
// returns.
func Do(ns string, f func() error) error {
	if ns == "" { // the caller's own
		return f()
	}
	target, err := OpenNS(ns)
	if err != nil {
		return err
	}
	defer target.Close()
	return doIn(target, ns, f)
}

// doIn is Do for an open namespace, named name in errors.
func doIn(target netns.NsHandle, name string, f func() error) (err error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("entering network namespace %q: %w", name, err)
	}
	// Deferred, so that a panicking f (or a test's t.FailNow) does not
	// hand the thread back to the scheduler inside the namespace.
	defer func() {
		if rerr := netns.Set(orig); rerr != nil {
			// The thread is in the wrong namespace: it stays locked and
			// dies with the goroutine rather than serve anyone else.
			err = errors.Join(err, fmt.Errorf("leaving network namespace %q: %w", name, rerr))
			return
		}
		runtime.UnlockOSThread()
	}()
	return f()
}

// OpenNS opens a network namespace by name (in /run/netns) or path.
func OpenNS(ns string) (netns.NsHandle, error) {
	var h netns.NsHandle
	var err error
	if strings.Contains(ns, "/") {
		h, err = netns.GetFromPath(ns)
	} else {
		h, err = netns.GetFromName(ns)
	}
	if err != nil {
		return 0, fmt.Errorf("network namespace %q: %w", ns, err)
	}
	return h, nil
}

// Apply implements dataplane.Backend.
func (b *Backend) Apply(_ context.Context, e dataplane.End) (err error) {
	if e.ID == "" || strings.ContainsAny(e.ID, ": /") {
		return fmt.Errorf("end id %q: empty or has ':', ' ' or '/'", e.ID)
	}
	if e.Interface == "" {
		e.Interface = dataplane.DefaultInterface
	}
	if err := checkIfName(e.Interface); err != nil {
		return err
	}
	if e.VXLAN != nil || e.Bridge != "" {
		b.gate.Lock()
		defer b.gate.Unlock()
	} else {
		b.gate.RLock()
		defer b.gate.RUnlock()
	}
	defer b.claim(e)()
	in, err := openIn(e.NetNS)
	if err != nil {
		return err
	}
	defer in.Close()
	nsh, inNS, dumps := in.nsh, in.h, in.dumps
	host, err := b.host.LinkByName(hostName(e.ID))
	mine := err == nil && host.Attrs().Alias == hostAlias(e)
	var werr error
	if mine {
		werr = current(inNS, host, e)
	}
	// An end that holds what it asks for already was checked when it took
	// it (a gateway restarted under a thousand ends reprograms each, and
	// the check reads every address and route of both namespaces).
	if !mine || werr != nil || !holdsAlready(inNS, dumps, e) {
		if err := b.checkOverlap(inNS, nsh, e); err != nil {
			return err
		}
	}
	if mine && werr != nil {
		// The workload's half is gone (its namespace was recreated), or
		// the end changed its tunnel: start it again.
		b.remove(host, e.ID, e.NetNS)
		err = werr
	}
	made := err != nil
	if made {
		if host, err = b.create(inNS, nsh, e); err != nil {
			return err
		}
		defer func() {
			if err != nil { // a new end is all or nothing
				b.remove(host, e.ID, e.NetNS)
			}
		}()
	} else if host.Attrs().Alias != hostAlias(e) {
		return fmt.Errorf("%s exists but belongs to %q, not to end %q in %q", hostName(e.ID), host.Attrs().Alias, e.ID, e.NetNS)
	}
	return b.configure(inNS, nsh, dumps, host, e, made)
}

// needsIPv6 says whether routed end e carries IPv6: its addresses, the
// far side's, or a route it is given.
func needsIPv6(e dataplane.End) bool {
	if len(gateways(e)) > 1 {
		return true
	}
	for _, r := range e.Routes {
		if r.Prefix.Addr().Is6() {
			return true
		}
	}
	return slices.ContainsFunc(e.Accept, func(p netip.Prefix) bool { return p.Addr().Is6() })
}

// setIPv6 turns IPv6 off on both halves of a veth end that carries IPv4
// alone (on again if it comes to carry IPv6). The kernel gives every
// link with IPv6 a link-local address and routes (three of a vWire's six
// in the gateway's namespace, as many in the workload's), and walks them
// on every route dump and insert in that namespace: at 1,000 vWires half
// of what a restarted gateway read was other ends' IPv6 routes. Halves
// whose links are down when it is set never get them. Bridged ends carry
// whatever their workloads send and keep IPv6 (VXLAN ends are not veths).
// It goes through /proc/sys (no netlink request sets disable_ipv6), by
// the names of the links configure found and checked (link in namespace
// nsh, host in the gateway's), never by a name from the request.
func (b *Backend) setIPv6(nsh netns.NsHandle, link, host netlink.Link, e dataplane.End) error {
	if e.Bridge != "" {
		return nil
	}
	value := "1"
	if needsIPv6(e) {
		value = "0"
	}
	set := func(name string) func() error {
		return func() error {
			path := "/proc/sys/net/ipv6/conf/" + name + "/disable_ipv6"
			if value == "0" {
				// On already (as every link starts): nothing to write, which
				// a container's read-only /proc/sys would refuse.
				if cur, err := os.ReadFile(path); err != nil || strings.TrimSpace(string(cur)) == "0" {
					return nil
				}
				if err := os.WriteFile(path, []byte(value), 0); err != nil {
					return fmt.Errorf("IPv6 on %s, which the end carries: %w", name, err)
				}
				return nil
			}
			// Off is a saving, not a need: where /proc/sys is read-only (a
			// gateway in a container) or the kernel has no IPv6, the
			// halves stay as they are.
			_ = os.WriteFile(path, []byte(value), 0)
			return nil
		}
	}
	if err := doIn(nsh, e.NetNS, set(link.Attrs().Name)); err != nil {
		return err
	}
	if b.nsFD >= 0 {
		return doIn(netns.NsHandle(b.nsFD), "of the gateway", set(host.Attrs().Name))
	}
	return set(host.Attrs().Name)()
}

// holdsAlready says whether the workload's half of IP end e has e's
// addresses and routes, and no others of vwire's, as they are programmed.
func holdsAlready(inNS *netlink.Handle, dumps *nl.SocketHandle, e dataplane.End) bool {
	if e.VXLAN != nil {
		return false // (its inner address is checked too)
	}
	link, err := workloadLink(inNS, e.ID, e.Interface)
	if err != nil {
		return false
	}
	addrs, err := linkAddrs(dumps, link.Attrs().Index)
	if err != nil {
		return false
	}
	var have []string
	for _, p := range addrs {
		if !p.Addr().IsLinkLocalUnicast() {
			have = append(have, p.String())
		}
	}
	var want []string
	for _, p := range e.Addrs {
		want = append(want, p.String())
	}
	routes, err := dump(func() ([]netlink.Route, error) {
		return inNS.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: link.Attrs().Index, Protocol: routeProtocol},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
	})
	if err != nil {
		return false
	}
	for _, r := range routes {
		have = append(have, "route "+prefix(r.Dst).String())
	}
	for _, r := range workloadRoutes(e) {
		want = append(want, "route "+r.Prefix.Masked().String())
	}
	slices.Sort(have)
	slices.Sort(want)
	return slices.Equal(have, want)
}

// current says whether the end's programmed halves can be kept for e: the
// workload's half is there, and of the kind e wants (a VXLAN device with
// e's tunnel, or the other half of a veth pair).
func current(inNS *netlink.Handle, host netlink.Link, e dataplane.End) error {
	link, err := workloadLink(inNS, e.ID, e.Interface)
	if err != nil {
		return err
	}
	vx, isVXLAN := link.(*netlink.Vxlan)
	switch {
	case e.VXLAN == nil && !isVXLAN:
		return nil
	case e.VXLAN != nil && isVXLAN && vxlanOf(vx) == e.VXLAN.WithPort():
		return nil
	}
	return fmt.Errorf("end %q changed its tunnel", e.ID)
}

// vxlanOf is the tunnel of a VXLAN device, as an end states it.
func vxlanOf(vx *netlink.Vxlan) dataplane.VXLAN {
	local, _ := netip.AddrFromSlice(vx.SrcAddr)
	remote, _ := netip.AddrFromSlice(vx.Group)
	return dataplane.VXLAN{VNI: uint32(vx.VxlanId), Local: local.Unmap(), Remote: remote.Unmap(), Port: uint16(vx.Port)}
}

// create makes the end's two halves: the workload's under its name in its
// namespace, and the gateway's in the gateway's namespace, tagged with the
// end. For a VXLAN end the workload's half is the VXLAN device itself
// (its socket stays in the gateway's namespace, where it was made), and the
// gateway's half is a bridge with no ports that only carries the tag: no
// veth, no bridge and no netfilter between the workload and the tunnel.
// Other ends are a veth pair.
func (b *Backend) create(inNS *netlink.Handle, nsh netns.NsHandle, e dataplane.End) (netlink.Link, error) {
	if _, err := inNS.LinkByName(e.Interface); err == nil {
		return nil, fmt.Errorf("interface %q already exists in network namespace %q", e.Interface, e.NetNS)
	}
	if e.VXLAN != nil {
		return b.createVXLAN(inNS, nsh, e)
	}
	// The workload's half is made in its namespace under its name: moving
	// and renaming a link afterwards waits for RCU grace periods (tens of
	// milliseconds a vWire).
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName(e.ID), MTU: e.MTU}, PeerName: e.Interface,
		PeerNamespace: netlink.NsFd(nsh)}
	if err := b.host.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("creating %s with %s in %q: %w", veth.Name, e.Interface, e.NetNS, err)
	}
	host, err := b.host.LinkByName(veth.Name)
	if err == nil {
		err = b.host.LinkSetAlias(host, hostAlias(e))
	}
	if err == nil {
		var peer netlink.Link
		if peer, err = inNS.LinkByName(e.Interface); err == nil {
			err = inNS.LinkSetAlias(peer, aliasPrefix+e.ID)
		}
	}
	if err != nil {
		_ = b.host.LinkDel(veth) // takes the peer with it, wherever it is
		return nil, fmt.Errorf("injecting %s into %q: %w", e.Interface, e.NetNS, err)
	}
	return host, nil
}

// createVXLAN makes a VXLAN end's halves (see create).
func (b *Backend) createVXLAN(inNS *netlink.Handle, nsh netns.NsHandle, e dataplane.End) (netlink.Link, error) {
	v := e.VXLAN.WithPort()
	vx := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{Name: e.Interface, MTU: e.MTU, Namespace: netlink.NsFd(nsh)},
		VxlanId:   int(v.VNI), Port: int(v.Port),
		Group: net.IP(v.Remote.AsSlice()), SrcAddr: net.IP(v.Local.AsSlice()),
		Learning: true,
	}
	if err := b.host.LinkAdd(vx); err != nil {
		return nil, fmt.Errorf("VXLAN %d as %s in %q: %w", v.VNI, e.Interface, e.NetNS, err)
	}
	link, err := inNS.LinkByName(e.Interface)
	if err == nil {
		err = inNS.LinkSetAlias(link, aliasPrefix+e.ID)
	}
	if err != nil {
		if link != nil {
			_ = inNS.LinkDel(link)
		}
		return nil, fmt.Errorf("VXLAN %d as %s in %q: %w", v.VNI, e.Interface, e.NetNS, err)
	}
	host, err := b.addBridge(hostName(e.ID), hostAlias(e))
	if err != nil {
		_ = inNS.LinkDel(link)
		return nil, err
	}
	return host, nil
}

// isTag says whether host is the tag of a VXLAN end, not a veth half.
func isTag(host netlink.Link) bool { return host.Type() == "bridge" }

// configure brings both halves to the end's MTU, addresses and routes
// (made: just made, so the workload's half has none to remove).
func (b *Backend) configure(inNS *netlink.Handle, nsh netns.NsHandle, dumps *nl.SocketHandle, host netlink.Link, e dataplane.End, made bool) error {
	link, err := workloadLink(inNS, e.ID, e.Interface)
	if err != nil {
		return err
	}
	if link.Attrs().Name != e.Interface {
		return fmt.Errorf("end %q is %s in %q; it cannot be renamed to %s (close and request again)", e.ID, link.Attrs().Name, e.NetNS, e.Interface)
	}
	if !isTag(host) { // (a VXLAN end carries what its workload sends)
		if err := b.setIPv6(nsh, link, host, e); err != nil {
			return err
		}
	}
	if e.MTU > 0 {
		if err := inNS.LinkSetMTU(link, e.MTU); err != nil {
			return fmt.Errorf("MTU %d on %s: %w", e.MTU, e.Interface, err)
		}
	}
	if err := setAddrs(inNS, dumps, link, e.Addrs, made); err != nil {
		return fmt.Errorf("addresses of %s in %q: %w", e.Interface, e.NetNS, err)
	}
	if err := inNS.LinkSetUp(link); err != nil {
		return err
	}
	if err := setRoutes(inNS, link, workloadRoutes(e), made); err != nil {
		return fmt.Errorf("routes of %s in %q: %w", e.Interface, e.NetNS, err)
	}
	if isTag(host) {
		// The VXLAN device is the whole end; its packets may go inside
		// the WireGuard tunnel to the peer gateway.
		if e.WireGuard != nil {
			return b.setInner(e)
		}
		if b.tunnels != nil {
			return b.tunnels.Release(e.ID)
		}
		return nil
	}
	// The gateway's half of a veth pair: what the workload's packets meet.
	if e.MTU > 0 {
		if err := b.host.LinkSetMTU(host, e.MTU); err != nil {
			return fmt.Errorf("MTU %d on %s: %w", e.MTU, host.Attrs().Name, err)
		}
	}
	if err := b.host.LinkSetUp(host); err != nil {
		return err
	}
	if e.WireGuard != nil || len(e.Routed) > 0 {
		if err := b.setNeighbours(inNS, link, host, e); err != nil {
			return err
		}
	}
	if err := b.setWireGuard(host, e); err != nil {
		return err
	}
	return b.setBridge(host, e)
}

// setNeighbours makes a routed end's halves know each other's hardware
// address for good: the workload its next hop (the gateway half's
// addresses), the gateway half the workload's addresses. The kernel's
// neighbour tables are shared by every namespace and hold 1,024 learnt
// entries (gc_thresh3) before they refuse more, which two per vWire on a
// host reach at some 500 vWires; permanent entries do not count, and the
// first packet waits for no ARP. They go with the link.
func (b *Backend) setNeighbours(inNS *netlink.Handle, link, host netlink.Link, e dataplane.End) error {
	for _, gw := range gateways(e) {
		n := &netlink.Neigh{LinkIndex: link.Attrs().Index, Family: family(gw), State: netlink.NUD_PERMANENT,
			IP: net.IP(gw.AsSlice()), HardwareAddr: host.Attrs().HardwareAddr}
		if err := inNS.NeighSet(n); err != nil {
			return fmt.Errorf("the neighbour %s on %s: %w", gw, e.Interface, err)
		}
	}
	for _, p := range e.Addrs {
		n := &netlink.Neigh{LinkIndex: host.Attrs().Index, Family: family(p.Addr()), State: netlink.NUD_PERMANENT,
			IP: net.IP(p.Addr().AsSlice()), HardwareAddr: link.Attrs().HardwareAddr}
		if err := b.host.NeighSet(n); err != nil {
			return fmt.Errorf("the neighbour %s on %s: %w", p.Addr(), host.Attrs().Name, err)
		}
	}
	return nil
}

// workloadRoutes are the end's routes, and for a WireGuard end the far
// side's addresses through the gateway half (a VXLAN end's tunnel carries
// its frames, not routes).
func workloadRoutes(e dataplane.End) []dataplane.Route {
	if e.VXLAN != nil {
		return e.Routes
	}
	far := e.Routed
	if e.WireGuard != nil {
		far = e.WireGuard.Remote
	}
	var routes []dataplane.Route // via the gateway half, on link: each end has its own
	for _, p := range far {
		routes = append(routes, dataplane.Route{Prefix: p, Via: gatewayOf(p.Addr())})
	}
	return append(routes, e.Routes...)
}

// setWireGuard routes an IP end through its peer gateway's WireGuard
// device: packets from the end's gateway half follow a rule to a table of
// its own (so ends with the same addresses through other peers do not
// meet), and packets for the end's addresses go back into the half.
func (b *Backend) setWireGuard(host netlink.Link, e dataplane.End) error {
	if e.WireGuard == nil {
		b.removeWireGuard(e.ID)
		if len(e.Routed) > 0 {
			return b.routeBack(host, e)
		}
		return nil
	}
	wg, err := b.tunnelDevice(e)
	if err != nil {
		return err
	}
	device := wg.Attrs().Name
	table, err := b.tableFor(host.Attrs().Name)
	if err != nil {
		return err
	}
	// The far side, in the end's table.
	have, err := dump(func() ([]netlink.Route, error) {
		return b.routes.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, p := range e.WireGuard.Remote {
		r := &netlink.Route{Dst: ipNet(p), LinkIndex: wg.Attrs().Index, Table: table, Scope: netlink.SCOPE_LINK, Protocol: routeProtocol}
		if err := b.host.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s into %s: %w", p, device, err)
		}
		want[p.String()] = true
	}
	for _, r := range have {
		if r.Dst != nil && !want[prefix(r.Dst).String()] {
			_ = b.host.RouteDel(&r)
		}
	}
	// The rules, one per family, that send the half's packets to that
	// table (the kernel refuses one it has already: a refresh adds only
	// a new family's, and no rules are listed).
	for _, gw := range gateways(e) {
		rule := netlink.NewRule()
		rule.IifName, rule.Table, rule.Priority, rule.Family = host.Attrs().Name, table, rulePriority, family(gw)
		if err := b.host.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("rule for %s: %w", host.Attrs().Name, err)
		}
	}
	return b.routeBack(host, e)
}

// tunnelDevice is the WireGuard device end e goes through: the one the
// backend keeps for its peer gateway's key (made or updated with e's far
// addresses), or the device e names.
func (b *Backend) tunnelDevice(e dataplane.End) (netlink.Link, error) {
	w, device := e.WireGuard, e.WireGuard.Device
	if w.Peer != "" {
		if b.tunnels == nil {
			return nil, fmt.Errorf("end %q names a peer gateway, but this backend keeps no tunnels", e.ID)
		}
		key, err := wgtypes.ParseKey(w.Peer)
		if err != nil {
			return nil, fmt.Errorf("end %q: peer gateway key %q: %w", e.ID, w.Peer, err)
		}
		if device, _, err = b.tunnels.Use(e.ID, key, w.Endpoint, w.Learnt, w.Remote, w.Port); err != nil {
			return nil, fmt.Errorf("end %q: tunnel to %s: %w", e.ID, w.Endpoint, err)
		}
	}
	wg, err := b.host.LinkByName(device)
	if err != nil {
		return nil, fmt.Errorf("end %q: WireGuard device %q: %w", e.ID, device, err)
	}
	return wg, nil
}

// setInner carries a VXLAN end inside the WireGuard tunnel to its peer
// gateway: the tunnel's device, with the peer's inner address among its
// allowed IPs and routed into it, and this gateway's own inner address on
// it (where the peer's VXLAN packets arrive). Devices, routes and address
// are shared by the peer's ends; the device goes with the last.
func (b *Backend) setInner(e dataplane.End) error {
	w := e.WireGuard
	if w.Peer == "" {
		return fmt.Errorf("end %q: an Ethernet end inside WireGuard needs the peer gateway's key", e.ID)
	}
	wg, err := b.tunnelDevice(e)
	if err != nil {
		return err
	}
	device := wg.Attrs().Name
	local := netip.PrefixFrom(e.VXLAN.Local, e.VXLAN.Local.BitLen())
	if err := b.host.AddrReplace(wg, address(local)); err != nil {
		return fmt.Errorf("the gateway's inner address %s on %s: %w (Ethernet vWires across domains need IPv6 in the gateway's namespace: net.ipv6.conf.all.disable_ipv6=0)", local, device, err)
	}
	// Into the embedded wireguard-go's Ethernet TUN where it has one (it
	// takes the kernel's VXLAN segments whole), else into the device.
	into := wg
	if name, err := b.tunnels.Ethernet(e.ID); err != nil {
		b.tunnels.log.Warn("Ethernet vWires through this tunnel are cut into packets by the kernel, a packet a read (slower)", "device", device, "err", err)
	} else if name != "" {
		if into, err = b.host.LinkByName(name); err != nil {
			return fmt.Errorf("the Ethernet TUN %s beside %s: %w", name, device, err)
		}
	}
	for _, p := range w.Remote {
		r := &netlink.Route{Dst: ipNet(p), LinkIndex: into.Attrs().Index, Protocol: routeProtocol}
		if err := b.host.RouteReplace(r); err != nil {
			return fmt.Errorf("route to the peer gateway's inner address %s into %s: %w", p, into.Attrs().Name, err)
		}
	}
	return nil
}

// routeBack makes the gateway half the workload's next hop and routes the
// end's own addresses into it.
func (b *Backend) routeBack(host netlink.Link, e dataplane.End) error {
	if b.forwarding != nil {
		if err := b.forwarding(); err != nil {
			return fmt.Errorf("enabling IPv4 forwarding, which routed ends need: %w", err)
		}
	}
	gws := gateways(e)
	if b.forwarding6 != nil && slices.Contains(gws, gatewayIP6) {
		if err := b.forwarding6(); err != nil {
			return fmt.Errorf("enabling IPv6 forwarding, which IPv6 vWires need: %w", err)
		}
	}
	b.clamp()
	for _, gw := range gws {
		if err := b.host.AddrReplace(host, address(netip.PrefixFrom(gw, gw.BitLen()))); err != nil {
			return fmt.Errorf("gateway address %s on %s: %w", gw, host.Attrs().Name, err)
		}
	}
	for _, p := range e.Addrs {
		r := &netlink.Route{Dst: ipNet(netip.PrefixFrom(p.Addr(), p.Addr().BitLen())), LinkIndex: host.Attrs().Index, Scope: netlink.SCOPE_LINK, Protocol: routeProtocol}
		if err := b.host.RouteReplace(r); err != nil {
			return fmt.Errorf("route back to %s: %w", p.Addr(), err)
		}
	}
	return nil
}

// tableFor is the routing table of gateway half name: the one it holds,
// or the lowest free one, which it holds from now on (ends applied at
// once take different tables).
func (b *Backend) tableFor(name string) (int, error) {
	b.tmu.Lock()
	defer b.tmu.Unlock()
	tables, err := b.tablesLocked()
	if err != nil {
		return 0, err
	}
	table, ok := tables[name]
	if !ok {
		table = freeTable(tables)
		tables[name] = table
	}
	return table, nil
}

// removeWireGuard removes an end's rule and table (its routes on the
// gateway half go with the half).
func (b *Backend) removeWireGuard(id string) {
	if b.tunnels != nil {
		if err := b.tunnels.Release(id); err != nil {
			b.tunnels.log.Warn("releasing a WireGuard peer failed", "id", id, "err", err)
		}
	}
	b.tmu.Lock()
	tables, err := b.tablesLocked()
	table, ok := tables[hostName(id)]
	b.tmu.Unlock()
	if err != nil || !ok {
		return
	}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rule := netlink.NewRule()
		rule.IifName, rule.Table, rule.Priority, rule.Family = hostName(id), table, rulePriority, fam
		_ = b.host.RuleDel(rule) // (none of a family the end did not have)
	}
	if routes, err := dump(func() ([]netlink.Route, error) {
		return b.routes.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
	}); err == nil {
		for _, r := range routes {
			_ = b.host.RouteDel(&r)
		}
	}
	// Free once its routes are gone: the next end to take it keeps its own.
	b.tmu.Lock()
	delete(b.tables, hostName(id))
	b.tmu.Unlock()
}

// bridge is end id's bridge, made and tagged if it is not there yet.
func (b *Backend) bridge(id string) (netlink.Link, error) {
	if br, err := b.host.LinkByName(bridgeName(id)); err == nil {
		return br, nil
	}
	return b.addBridge(bridgeName(id), aliasPrefix+id) // the tag removeBridge looks for
}

// addBridge makes a bridge in the gateway's namespace with alias as its
// tag: whole, or not at all.
func (b *Backend) addBridge(name, alias string) (netlink.Link, error) {
	if err := b.host.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		return nil, fmt.Errorf("creating bridge %s: %w", name, err)
	}
	br, err := b.host.LinkByName(name)
	if err == nil {
		err = b.host.LinkSetAlias(br, alias)
	}
	if err != nil {
		_ = b.host.LinkDel(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}})
		return nil, fmt.Errorf("tagging bridge %s: %w", name, err)
	}
	return br, nil
}

// setBridge puts the end's gateway half in the bridge of end e.Bridge on
// this gateway (its own, made if missing, when it names itself): two
// workloads of one gateway on one Ethernet link. Without e.Bridge it
// removes the end's own bridge, if any.
func (b *Backend) setBridge(host netlink.Link, e dataplane.End) error {
	if e.Bridge == "" {
		b.removeBridge(e.ID)
		return nil
	}
	var br netlink.Link
	var err error
	if e.Bridge == e.ID {
		br, err = b.bridge(e.ID)
	} else if br, err = b.host.LinkByName(bridgeName(e.Bridge)); err != nil || br.Attrs().Alias != aliasPrefix+e.Bridge {
		err = fmt.Errorf("end %q joins the bridge of end %q on this gateway, which is not programmed", e.ID, e.Bridge)
	}
	if err != nil {
		return err
	}
	if host.Attrs().MasterIndex != br.Attrs().Index {
		if err := b.host.LinkSetMaster(host, br); err != nil {
			return err
		}
	}
	return b.host.LinkSetUp(br)
}

// removeBridge removes end id's bridge, and the gateway-side VXLAN device
// of an end made by versions before the device moved into the workload's
// namespace.
func (b *Backend) removeBridge(id string) {
	for _, name := range []string{vxlanName(id), bridgeName(id)} {
		if l, err := b.host.LinkByName(name); err == nil && l.Attrs().Alias == aliasPrefix+id {
			_ = b.host.LinkDel(l)
		}
	}
}

// dump runs a netlink dump again while concurrent changes interrupt it
// (the kernel marks such a dump: its results may be incomplete), as they
// do when many vWires change at once.
func dump[T any](list func() (T, error)) (T, error) {
	for i := 0; ; i++ {
		out, err := list()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == 9 {
			return out, err
		}
	}
}

// workloadLink finds the end's interface in the namespace by its alias.
func workloadLink(inNS *netlink.Handle, id, name string) (netlink.Link, error) {
	// By its name first: listing every link of a namespace that holds a
	// thousand vWires costs more than the rest of a change.
	if l, err := inNS.LinkByName(name); err == nil && l.Attrs().Alias == aliasPrefix+id {
		return l, nil
	}
	links, err := dump(func() ([]netlink.Link, error) { return inNS.LinkList() })
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if l.Attrs().Alias == aliasPrefix+id {
			return l, nil
		}
	}
	return nil, fmt.Errorf("end %q has no interface in its namespace (it was moved or deleted)", id)
}

// setAddrs gives link the addresses want and no others but link-local
// ones (made: it has none yet; reading them costs a walk over every
// address of the namespace).
func setAddrs(h *netlink.Handle, dumps *nl.SocketHandle, link netlink.Link, want []netip.Prefix, made bool) error {
	var have []netip.Prefix
	var err error
	if !made {
		if have, err = linkAddrs(dumps, link.Attrs().Index); err != nil {
			return err
		}
	}
	wanted := map[netip.Prefix]bool{}
	for _, p := range want {
		wanted[p] = true
		if err := h.AddrReplace(link, address(p)); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	for _, p := range have {
		if !wanted[p] && !p.Addr().IsLinkLocalUnicast() {
			if err := h.AddrDel(link, address(p)); err != nil {
				return fmt.Errorf("removing %s: %w", p, err)
			}
		}
	}
	return nil
}

// setRoutes gives link vwire's routes want and no other of vwire's (made:
// it has none yet; reading them costs a walk over every route of the
// namespace).
func setRoutes(h *netlink.Handle, link netlink.Link, want []dataplane.Route, made bool) error {
	var have []netlink.Route
	var err error
	if !made {
		have, err = dump(func() ([]netlink.Route, error) {
			return h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: link.Attrs().Index, Protocol: routeProtocol},
				netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL)
		})
	}
	if err != nil {
		return err
	}
	wanted := map[string]bool{}
	for _, r := range want {
		route := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(r.Prefix), Protocol: routeProtocol}
		if r.Via.IsValid() {
			route.Gw = net.IP(r.Via.AsSlice())
			if r.Via == gatewayIP { // fe80::1 is on every link by itself
				route.Flags = int(netlink.FLAG_ONLINK)
			}
		} else {
			route.Scope = netlink.SCOPE_LINK
		}
		if err := h.RouteReplace(route); err != nil {
			return fmt.Errorf("%s: %w", r.Prefix, err)
		}
		wanted[r.Prefix.String()] = true
	}
	for _, r := range have {
		if r.Dst != nil && !wanted[prefix(r.Dst).String()] {
			if err := h.RouteDel(&r); err != nil {
				return fmt.Errorf("removing %s: %w", r.Dst, err)
			}
		}
	}
	return nil
}

// Remove implements dataplane.Backend.
func (b *Backend) Remove(_ context.Context, id string) error {
	b.gate.RLock()
	defer b.gate.RUnlock()
	host, err := b.host.LinkByName(hostName(id))
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil
	}
	if err != nil {
		return err
	}
	got, ns, ok := parseHostAlias(host.Attrs().Alias)
	if !ok || got != id {
		return fmt.Errorf("%s belongs to %q, not to end %q", host.Attrs().Name, host.Attrs().Alias, id)
	}
	b.mu.Lock()
	going := b.removing[id] != nil
	b.mu.Unlock()
	if going {
		return nil
	}
	// The kernel answers a link's deletion only after RCU grace periods,
	// some 20 ms for a veth: a close waited for two (one per side) and
	// was four times as long as a set-up. A veth end's pair goes in the
	// background; what a new end could want of it (its id, its
	// workload's interface name and addresses) waits for it. (The caller
	// keeps other changes to this end away.)
	var r *busy
	if !isTag(host) {
		r, err = b.removalOf(host, id, ns)
	}
	if r == nil {
		if err != nil {
			slog.Debug("removing a vWire's links while its close waits", "id", id, "err", err)
		}
		return b.remove(host, id, ns)
	}
	b.mu.Lock()
	b.removing[id] = r
	b.mu.Unlock()
	b.detach(id)
	b.pending.Add(1)
	go func() {
		defer b.pending.Done()
		if err := b.unlink(host, id, ns); err != nil {
			slog.Warn("removing a closed vWire's links failed; the reconciler tries again", "id", id, "err", err)
		}
		b.mu.Lock()
		delete(b.removing, id)
		b.mu.Unlock()
		close(r.done)
	}()
	return nil
}

// busy is an end being applied (a claim) or whose links the kernel is
// deleting in the background (a removal), and what it holds or is taking
// (its id; its workload half's namespace and name; its addresses, and
// those with the destinations of its routes there), which an end that
// could meet it may not have until done is closed.
type busy struct {
	done        chan struct{}
	id, ns, ifc string
	addrs, held []netip.Prefix
}

// footprint is what end e takes, as a busy end.
func footprint(e dataplane.End) *busy {
	f := &busy{done: make(chan struct{}), id: e.ID, ns: e.NetNS, ifc: e.Interface, addrs: e.Addrs}
	f.held = slices.Clone(e.Addrs)
	for _, r := range workloadRoutes(e) {
		f.held = append(f.held, r.Prefix)
	}
	return f
}

// meets says whether ends f and g could not both be had, or could not be
// checked apart: the same id; addresses that overlap (the gateway's
// routes to them are shared); in one namespace, the same interface or
// overlapping addresses or routes.
func (f *busy) meets(g *busy) bool {
	overlaps := func(ps, qs []netip.Prefix) bool {
		return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return slices.ContainsFunc(qs, p.Overlaps) })
	}
	return f.id == g.id || overlaps(f.addrs, g.addrs) ||
		f.ns == g.ns && (f.ifc == g.ifc || overlaps(f.held, g.held))
}

// removalOf reads what veth end id (whose gateway half is host) holds in
// its workload's namespace ns.
func (b *Backend) removalOf(host netlink.Link, id, ns string) (*busy, error) {
	peer := host.Attrs().ParentIndex
	if peer == 0 || host.Attrs().NetNsID < 0 {
		return nil, errors.New("the workload's half is not in another namespace")
	}
	in, err := openIn(ns)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	s := in.dumps
	l, err := in.h.LinkByIndex(peer)
	if err != nil || l.Attrs().Alias != aliasPrefix+id {
		return nil, fmt.Errorf("link %d in %q is not end %q's (%v)", peer, ns, id, err)
	}
	r := &busy{done: make(chan struct{}), id: id, ns: ns, ifc: l.Attrs().Name}
	if r.addrs, err = linkAddrs(s, peer); err != nil {
		return nil, err
	}
	r.held = slices.Clone(r.addrs)
	if err := mainRoutes(s, peer, func(k heldKey) { r.held = append(r.held, k.p) }); err != nil {
		return nil, err
	}
	return r, nil
}

// claim waits until no end being applied or removed could meet end e,
// then claims what e takes until the returned release is called: two
// ends that could meet are programmed one after the other, and the
// second's overlap check sees what the first holds.
func (b *Backend) claim(e dataplane.End) (release func()) {
	f := footprint(e)
	b.mu.Lock()
	for g := b.blocking(f); g != nil; g = b.blocking(f) {
		b.mu.Unlock()
		<-g.done
		b.mu.Lock()
	}
	b.claims[e.ID] = f
	b.mu.Unlock()
	return func() {
		b.mu.Lock()
		delete(b.claims, e.ID)
		b.mu.Unlock()
		close(f.done)
	}
}

// blocking is an end being removed or applied that f could meet (nil:
// none); b.mu is held.
func (b *Backend) blocking(f *busy) *busy {
	for _, busy := range []map[string]*busy{b.removing, b.claims} {
		for _, g := range busy {
			if f.meets(g) {
				return g
			}
		}
	}
	return nil
}

// settle waits until the links of the ends removed so far are gone.
func (b *Backend) settle() { b.pending.Wait() }

// remove removes end id's halves: host, the gateway's (a veth, whose
// workload half goes with it, or a VXLAN end's tag, whose VXLAN device in
// namespace ns is removed by name), and what routes or bridges it.
func (b *Backend) remove(host netlink.Link, id, ns string) error {
	b.detach(id)
	return b.unlink(host, id, ns)
}

// detach removes what routes or bridges end id.
func (b *Backend) detach(id string) {
	b.removeBridge(id)
	b.removeWireGuard(id)
}

// ownHandle is a netlink socket of its own in the gateway's namespace,
// for work done outside the backend's lock.
func (b *Backend) ownHandle() (*netlink.Handle, error) {
	gw := processNS
	if b.nsFD >= 0 {
		gw = netns.NsHandle(b.nsFD)
	} else if processNSErr != nil {
		return nil, fmt.Errorf("the process's network namespace: %w", processNSErr)
	}
	h, err := netlink.NewHandleAt(gw)
	if err != nil {
		return nil, fmt.Errorf("netlink in the gateway's network namespace: %w", err)
	}
	return h, nil
}

// unlink removes end id's halves, host and (for a VXLAN end's tag) the
// VXLAN device in namespace ns, each on a netlink socket of its own: a
// deletion holds its socket until the kernel is done with it.
func (b *Backend) unlink(host netlink.Link, id, ns string) error {
	if isTag(host) {
		if h, err := handleIn(ns); err == nil {
			if link, err := workloadLink(h, id, ""); err == nil {
				_ = h.LinkDel(link)
			}
			h.Close()
		}
	}
	h, err := b.ownHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	if err := h.LinkDel(host); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("removing %s: %w", host.Attrs().Name, err)
	}
	return nil
}

// List implements dataplane.Backend.
func (b *Backend) List(context.Context) ([]dataplane.End, error) {
	b.gate.Lock()
	defer b.gate.Unlock()
	b.mu.Lock()
	removing := maps.Clone(b.removing)
	b.mu.Unlock()
	links, err := dump(func() ([]netlink.Link, error) { return b.host.LinkList() })
	if err != nil {
		return nil, err
	}
	rules, err := dump(func() ([]netlink.Rule, error) { return b.host.RuleList(netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("listing the policy rules: %w", err)
	}
	tables := endTables(rules)
	b.tmu.Lock()
	b.tables = tables // as the kernel has them now
	b.tmu.Unlock()
	// Every table's routes in one dump, and each namespace read once: a
	// dump per end would be a thousand dumps of a thousand ends' routes.
	all, err := dump(func() ([]netlink.Route, error) {
		return b.host.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("listing the routes: %w", err)
	}
	inTable := map[int][]netlink.Route{}
	for _, r := range all {
		inTable[r.Table] = append(inTable[r.Table], r)
	}
	byIndex := map[int]netlink.Link{}
	for _, l := range links {
		byIndex[l.Attrs().Index] = l
	}
	views := map[string]*nsView{}
	var out []dataplane.End
	for _, l := range links {
		id, ns, ok := parseHostAlias(l.Attrs().Alias)
		if !ok || removing[id] != nil {
			continue
		}
		e := dataplane.End{ID: id, NetNS: ns, MTU: l.Attrs().MTU}
		if m := l.Attrs().MasterIndex; m != 0 {
			if br, ok := byIndex[m]; ok {
				if owner, ok := strings.CutPrefix(br.Attrs().Alias, aliasPrefix); ok {
					e.Bridge = owner
				}
			}
		}
		var routes []netlink.Route
		if table, ok := tables[l.Attrs().Name]; ok {
			routes = inTable[table]
		}
		if len(routes) > 0 {
			e.WireGuard = &dataplane.WireGuard{}
			for _, r := range routes {
				if wg, ok := byIndex[r.LinkIndex]; ok {
					e.WireGuard.Device = wg.Attrs().Name
				}
				e.WireGuard.Remote = append(e.WireGuard.Remote, prefix(r.Dst))
			}
			if b.tunnels != nil {
				if key, ep, learnt, ok := b.tunnels.peerOf(id); ok {
					e.WireGuard.Peer, e.WireGuard.Endpoint, e.WireGuard.Learnt, e.WireGuard.Port = key.String(), ep, learnt, b.tunnels.ListenPort(id)
				}
			}
		}
		v := views[ns]
		if v == nil {
			v = readNS(ns)
			views[ns] = v
		}
		if err := v.workloadSide(&e); err != nil {
			e.Interface = "" // its half is gone: List says so, the reconciler repairs
		}
		if e.VXLAN != nil && b.tunnels != nil { // inside a tunnel?
			if key, ep, learnt, ok := b.tunnels.peerOf(id); ok {
				e.WireGuard = &dataplane.WireGuard{Peer: key.String(), Endpoint: ep, Learnt: learnt, Port: b.tunnels.ListenPort(id),
					Remote: b.tunnels.farOf(id)}
			}
		}
		out = append(out, e)
	}
	return out, nil
}

// nsView is what List reads of a workload namespace, once for all the
// ends in it: its links by alias, and its addresses and vwire's routes by
// link.
type nsView struct {
	err     error
	byAlias map[string]netlink.Link
	addrs   map[int][]netlink.Addr
	routes  map[int][]netlink.Route
}

func readNS(ns string) *nsView {
	v := &nsView{byAlias: map[string]netlink.Link{}, addrs: map[int][]netlink.Addr{}, routes: map[int][]netlink.Route{}}
	h, err := handleIn(ns)
	if err != nil {
		v.err = err
		return v
	}
	defer h.Close()
	links, err := dump(func() ([]netlink.Link, error) { return h.LinkList() })
	if err != nil {
		v.err = err
		return v
	}
	for _, l := range links {
		v.byAlias[l.Attrs().Alias] = l
	}
	addrs, err := dump(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		v.err = err
		return v
	}
	for _, a := range addrs {
		v.addrs[a.LinkIndex] = append(v.addrs[a.LinkIndex], a)
	}
	routes, err := dump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: routeProtocol}, netlink.RT_FILTER_PROTOCOL)
	})
	if err != nil {
		v.err = err
		return v
	}
	for _, r := range routes {
		v.routes[r.LinkIndex] = append(v.routes[r.LinkIndex], r)
	}
	return v
}

// workloadSide fills in e's workload half as the namespace has it.
func (v *nsView) workloadSide(e *dataplane.End) error {
	if v.err != nil {
		return v.err
	}
	link, ok := v.byAlias[aliasPrefix+e.ID]
	if !ok {
		return fmt.Errorf("end %q has no interface in its namespace (it was moved or deleted)", e.ID)
	}
	e.Interface, e.MTU = link.Attrs().Name, link.Attrs().MTU
	if vx, ok := link.(*netlink.Vxlan); ok {
		v := vxlanOf(vx)
		e.VXLAN = &v
	}
	for _, a := range v.addrs[link.Attrs().Index] {
		if p := prefix(a.IPNet); !p.Addr().IsLinkLocalUnicast() {
			e.Addrs = append(e.Addrs, p)
		}
	}
	for _, r := range v.routes[link.Attrs().Index] {
		rt := dataplane.Route{Prefix: prefix(r.Dst)}
		if gw, _ := netip.AddrFromSlice(r.Gw); gw.Unmap() == gatewayOf(gw.Unmap()) { // via the gateway half
			if e.WireGuard == nil {
				e.Routed = append(e.Routed, rt.Prefix)
			}
			continue // made for the routed end, not asked for
		}
		if r.Gw != nil {
			rt.Via, _ = netip.AddrFromSlice(r.Gw)
			rt.Via = rt.Via.Unmap()
		}
		e.Routes = append(e.Routes, rt)
	}
	return nil
}

// Close implements dataplane.Backend.
// The MSS clamping table stays only with ends (a shutdown that keeps the
// data plane).
func (b *Backend) Close() error {
	b.settle()
	b.gate.Lock()
	defer b.gate.Unlock()
	b.unclamp()
	b.workloads.Close()
	if b.nsFD >= 0 {
		unix.Close(b.nsFD)
	}
	b.closeSockets()
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}

func prefix(n *net.IPNet) netip.Prefix {
	addr, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(addr.Unmap(), ones)
}

// CheckNamespace says why a workload's namespace cannot be used.
func CheckNamespace(ns string) error {
	h, err := handleIn(ns)
	if err != nil {
		return fmt.Errorf("network namespace %q does not exist or cannot be opened (%v)", ns, err)
	}
	h.Close()
	return nil
}

// checkIfName says why iface cannot name a workload's interface (as the
// kernel would refuse it, and as a path it must not become).
func checkIfName(iface string) error {
	if len(iface) > 15 || strings.ContainsAny(iface, "/: \t\n") || iface == "." || iface == ".." {
		return fmt.Errorf("interface name %q: at most 15 characters, not \".\" or \"..\", without '/', ':' or spaces", iface)
	}
	return nil
}

// CheckWorkload says why an end's interface cannot be made in a workload's
// namespace: the namespace does not exist, the name is not a valid
// interface name, or an interface has it already.
func CheckWorkload(ns, iface string) error {
	if err := checkIfName(iface); err != nil {
		return err
	}
	h, err := handleIn(ns)
	if err != nil {
		return fmt.Errorf("network namespace %q does not exist or cannot be opened (%v)", ns, err)
	}
	defer h.Close()
	if _, err := h.LinkByName(iface); err == nil {
		return fmt.Errorf("interface %q is already in use in network namespace %q (choose another with --interface)", iface, ns)
	}
	return nil
}
