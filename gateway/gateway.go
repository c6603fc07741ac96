package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	"github.com/vwire/vwire/gateway/dataplane"
	"github.com/vwire/vwire/gateway/handover"
	"github.com/vwire/vwire/internal/atomicfile"
	"github.com/vwire/vwire/internal/conncache"
	"github.com/vwire/vwire/internal/crashpoint"
	"github.com/vwire/vwire/internal/tracing"
	"github.com/vwire/vwire/proxy"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry/registrypb"
)

// Gateway programs this node's ends of vWires: it implements the proxy's
// Dataplane. For the endpoint's side it asks the endpoint (over its unix
// socket) for the addresses and its namespace; for the client's side it
// uses the namespace and interface the workload asked for through the
// gateway's socket. The tunnel between the two gateways is WireGuard for
// IP payload across domains (keys and ports exchanged in the connection's
// mechanism) and VXLAN for Ethernet payload and, unless IntraDomain says
// otherwise, for IP payload within the domain (the VNI chosen here, on the
// receiving side).
type Gateway struct {
	Node string
	// SpiffeID is the identity its path segments carry.
	SpiffeID string
	// URL is where the domain's proxy reaches the gateway (host:port of
	// its Service), for a gateway that runs as its own process; empty for
	// one inside the proxy's process.
	URL string
	// Addr is the gateway's tunnel address, which peer gateways send to.
	Addr netip.Addr
	// OuterMTU is the MTU of the link that carries the tunnels.
	OuterMTU int
	// Inner is the gateway's own address inside its WireGuard tunnels (an
	// IPv6 unique local address chosen at random once, see NewInner): the
	// VXLAN of Ethernet vWires across domains runs between two gateways'
	// inner addresses, encrypted.
	Inner netip.Addr
	// IntraDomain is the tunnel of IP vWires between two gateways of the
	// domain: "vxlan" (the default: the domain's own network) or
	// "wireguard" (encrypted there too).
	IntraDomain string
	// HandshakeTimeout bounds how long a new vWire waits for its tunnel's
	// first WireGuard handshake (0: DefaultHandshakeTimeout).
	HandshakeTimeout time.Duration
	// Endpoint looks up a registered endpoint of this domain by name.
	Endpoint func(ctx context.Context, name string) (*registrypb.Endpoint, error)
	// Pins keeps the network namespaces workloads hand over (a sidecar
	// in a container); nil: the gateway takes named namespaces only.
	Pins *handover.Pins
	// CheckNamespace says why a namespace a workload names is not one to
	// program (handover.CheckPath); nil: any.
	CheckNamespace func(ns string) error
	// DialOptions are added to the connections to endpoints (traces).
	DialOptions []grpc.DialOption

	backend    dataplane.Backend
	tunneler   dataplane.Tunneler
	reconciler *Reconciler
	file       *atomicfile.Journal // records, a change a line
	log        *slog.Logger
	nses       conncache.Cache // by endpoint URL

	// life orders programming against RemoveAll: set holds it shared,
	// RemoveAll takes it to mark the gateway stopping, after which nothing
	// is programmed (a refresh arriving while the domain stops would
	// otherwise put back an end that RemoveAll had already taken away).
	life     sync.RWMutex
	stopping bool

	mu      sync.Mutex
	records map[string]*record // by connection id and side: "c-ID", "e-ID"
	orphans []orphan           // records Open found without their ends, for Run
	waiting map[string]*proxypb.KernelInterface
}

// record is what the gateway keeps of one of its vWire ends, beyond the
// end itself: whom to tell when it goes.
type record struct {
	EndpointURL string   `json:",omitempty"` // the endpoint that assigned its addresses
	Src, Dst    []string `json:",omitempty"` // the addresses it assigned (client's, endpoint's)
	VNI         uint32   `json:",omitempty"`
}

var _ proxy.Dataplane = (*Gateway)(nil)

// DefaultHandshakeTimeout is how long a new vWire waits for its tunnel:
// long enough for WireGuard to resend an initiation that went unanswered
// (it does after 5 s).
const DefaultHandshakeTimeout = 6 * time.Second

// Open returns a gateway over backend, with its state in dir (the desired
// ends, and what it knows of each); it starts reprogramming that state at
// once when run.
func Open(node string, backend dataplane.Backend, dir string, log *slog.Logger) (*Gateway, error) {
	tun, ok := backend.(dataplane.Tunneler)
	if !ok {
		return nil, errors.New("the data-plane backend keeps no WireGuard tunnels")
	}
	r, err := NewReconciler(backend, filepath.Join(dir, "ends.json"), log)
	if err != nil {
		return nil, err
	}
	file := filepath.Join(dir, "vwires.json")
	g := &Gateway{Node: node, backend: backend, tunneler: tun, reconciler: r, log: log,
		records: map[string]*record{}, waiting: map[string]*proxypb.KernelInterface{}}
	j, values, err := atomicfile.OpenJournal(file, 0o600, legacyRecords)
	if err != nil {
		return nil, fmt.Errorf("gateway state: %w", err)
	}
	g.file = j
	for id, v := range values {
		var rec record
		if err := json.Unmarshal(v, &rec); err != nil {
			return nil, fmt.Errorf("gateway state %s: vWire end %q: %w", file, id, err)
		}
		g.records[id] = &rec
	}
	// A record with no end is a vWire a crash left half made or half
	// removed: it goes, and Run tells its endpoint.
	var n uint64
	for id, rec := range g.records {
		if _, ok := r.Get(id); !ok {
			g.orphans = append(g.orphans, orphan{id, rec.EndpointURL})
			delete(g.records, id)
			n = g.file.Delete(id)
		}
	}
	if n > 0 {
		if err := g.file.Save(n); err != nil {
			return nil, fmt.Errorf("gateway state: %w", err)
		}
	}
	return g, nil
}

// legacyRecords reads the records as they were kept before their
// journal: a JSON object of them by end id.
func legacyRecords(b []byte) (map[string]json.RawMessage, error) {
	var out map[string]json.RawMessage
	return out, json.Unmarshal(b, &out)
}

// orphan is a record a crash left without its end.
type orphan struct{ id, endpointURL string }

// closeOrphans tells the endpoints of the records a crash left without
// their ends that the connections closed (they hold address pairs).
func (g *Gateway) closeOrphans(ctx context.Context) {
	for _, o := range g.orphans {
		if o.endpointURL != "" {
			g.closeEndpoint(ctx, o.endpointURL, strings.TrimPrefix(o.id, "e-"))
		}
		g.log.Info("a vWire end a crash left half done is undone", "id", o.id)
	}
	g.orphans = nil
}

// Run reconciles until ctx ends.
func (g *Gateway) Run(ctx context.Context) {
	g.closeOrphans(ctx)
	g.repin(ctx)
	go g.learn(ctx)
	g.reconciler.Run(ctx)
}

// repin asks the endpoints of ends whose pinned namespaces are gone (the
// gateway restarted in a new container, whose mounts did not survive) for
// them again; a client's end is pinned again when its client requests.
func (g *Gateway) repin(ctx context.Context) {
	if g.Pins == nil {
		return
	}
	for _, e := range g.reconciler.Desired() {
		if !g.Pins.Pinned(e.NetNS) || g.Pins.Live(e.NetNS) || !strings.HasPrefix(e.ID, "e-") {
			continue
		}
		g.mu.Lock()
		rec := g.records[e.ID]
		g.mu.Unlock()
		if rec == nil || rec.EndpointURL == "" {
			continue
		}
		err := func() error {
			ctx, cancel := context.WithTimeout(ctx, endpointCloseTimeout)
			defer cancel()
			nse, err := g.dialEndpoint(rec.EndpointURL)
			if err != nil {
				return err
			}
			var via peer.Peer
			ask := &proxypb.Connection{Id: strings.TrimPrefix(e.ID, "e-"), IpContext: &proxypb.IPContext{SrcIpAddrs: rec.Src, DstIpAddrs: rec.Dst}}
			if _, err := proxypb.NewNetworkServiceClient(nse).Request(ctx, &proxypb.NetworkServiceRequest{Connection: ask}, grpc.Peer(&via)); err != nil {
				return err
			}
			handed, _ := via.AuthInfo.(*handover.Handed)
			_, err = g.pin(handed, e.ID)
			return err
		}()
		if err != nil {
			g.log.Warn("the endpoint's namespace could not be pinned again; the end waits for its client to request", "id", e.ID, "endpoint", rec.EndpointURL, "err", err)
		}
	}
}

// learn records, for ends whose peer gateway's address was not given (the
// endpoint's side), the address WireGuard learnt from the peer's packets:
// a restarted gateway then knows where its peer is and handshakes at once,
// instead of waiting until the peer gives up on the old session (15 s).
func (g *Gateway) learn(ctx context.Context) {
	tick := time.NewTicker(200 * time.Millisecond) // a wgctrl query per end not learnt yet
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for _, e := range g.reconciler.Desired() {
			if e.WireGuard == nil || e.WireGuard.Endpoint.IsValid() {
				continue
			}
			if at := g.tunneler.PeerEndpoint(e.ID); at.IsValid() {
				learnt := e
				w := *e.WireGuard
				w.Endpoint, w.Learnt = at, true
				learnt.WireGuard = &w
				if _, err := g.reconciler.Record(e, learnt); err != nil {
					g.log.Warn("recording a peer gateway's address", "id", e.ID, "err", err)
				}
			}
		}
	}
}

// Ends lists the desired ends (for status and tests).
func (g *Gateway) Ends() []dataplane.End { return g.reconciler.Desired() }

// Reconciled is how many ends the gateway programs now, and how many of
// its backend calls failed since the start.
func (g *Gateway) Reconciled() (ends int, failed int64) { return g.reconciler.Counts() }

// PublicKey is the gateway's WireGuard public key (base64).
func (g *Gateway) PublicKey() string { return g.tunneler.PublicKey() }

// Expect notes the interface a local workload asked for, for the client
// side of connection id that its request is about to set up.
func (g *Gateway) Expect(id string, k *proxypb.KernelInterface) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.waiting[id] = k
}

// Forget drops what Expect noted.
func (g *Gateway) Forget(id string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.waiting, id)
}

// endID names this gateway's end of connection id on side: both ends of a
// vWire within one gateway are two ends.
func endID(side proxy.Side, id string) string { return string(side[:1]) + "-" + id }

// Apply implements proxy.Dataplane.
func (g *Gateway) Apply(ctx context.Context, side proxy.Side, conn *proxypb.Connection) (*proxypb.Connection, error) {
	if side == proxy.EndpointSide {
		return g.ApplyEndpoint(ctx, conn, "")
	}
	if !g.Addr.IsValid() {
		return nil, errNoAddress
	}
	return g.applyClient(ctx, conn)
}

var errNoAddress = errors.New("the gateway has no tunnel address: give --gateway-address (there is no default route to take it from)")

// ApplyEndpoint asks the selected endpoint, at url (empty: as registered),
// for its end and programs it.
func (g *Gateway) ApplyEndpoint(ctx context.Context, conn *proxypb.Connection, url string) (_ *proxypb.Connection, err error) {
	if !g.Addr.IsValid() {
		return nil, errNoAddress
	}
	id := endID(proxy.EndpointSide, conn.GetId())
	src := sourceOf(conn.GetMechanism())
	if !src.IsValid() {
		return nil, errors.New("the request carries no client gateway address (mechanism src_ip)")
	}
	if err := hostAddr(src); err != nil {
		return nil, fmt.Errorf("the client gateway's address %s (mechanism src_ip): %w", src, err)
	}
	name := conn.GetNetworkServiceEndpointName()
	if url == "" {
		ep, err := g.Endpoint(ctx, name)
		if err != nil {
			return nil, err
		}
		url = ep.GetUrl()
	}
	nse, err := g.dialEndpoint(url)
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", name, err)
	}
	g.mu.Lock()
	rec, known := g.records[id]
	g.mu.Unlock()
	ask := proto.Clone(conn).(*proxypb.Connection)
	ask.Mechanism = nil
	if known && len(rec.Src) > 0 { // a refresh keeps its addresses
		ask.IpContext = &proxypb.IPContext{SrcIpAddrs: rec.Src, DstIpAddrs: rec.Dst}
	}
	var via peer.Peer
	got, err := proxypb.NewNetworkServiceClient(nse).Request(ctx, &proxypb.NetworkServiceRequest{Connection: ask}, grpc.Peer(&via))
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", name, err)
	}
	// Its namespace: the one it named, or the one its socket handed over.
	k := got.GetMechanism().GetKernel()
	ns := k.GetNetns()
	if ns == "" {
		handed, _ := via.AuthInfo.(*handover.Handed)
		if ns, err = g.pin(handed, id); err != nil {
			return nil, fmt.Errorf("endpoint %s: %w", name, err)
		}
	} else if err := g.checkNamespace(ns); err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", name, err)
	}
	end := dataplane.End{ID: id, NetNS: ns, Interface: k.GetInterfaceName()}
	defer func() {
		if err != nil && !known {
			g.unpin(end)
		}
	}()
	ethernet := conn.GetPayload() == "ETHERNET"
	if end.Addrs, err = prefixes(got.GetIpContext().GetDstIpAddrs()); err == nil {
		err = ownAddrs("its", end.Addrs, ethernet)
	}
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", name, err)
	}
	far, err := prefixes(got.GetIpContext().GetSrcIpAddrs())
	if err == nil {
		far, err = farRoutes("the client's", far, ethernet, nil)
	}
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", name, err)
	}
	out := proto.Clone(conn).(*proxypb.Connection)
	out.IpContext = got.GetIpContext()
	vni := uint32(0)
	if known {
		vni = rec.VNI
	}
	own, _ := base64.StdEncoding.DecodeString(g.PublicKey())
	local := bytes.Equal(conn.GetMechanism().GetWireguard().GetSrcPublicKey(), own)
	switch {
	case local && conn.GetPayload() == "ETHERNET":
		// Both ends on this gateway: one bridge joins them, no tunnel.
		end.MTU, end.Bridge = g.OuterMTU, id
	case local:
		// Both ends on this gateway: it routes between them, no tunnel.
		end.MTU, end.Routed = g.OuterMTU, far
	case ethernet && !intraDomain(conn) && !conn.GetPlainVxlan():
		// Ethernet across domains: VXLAN between the gateways' inner
		// addresses, inside their WireGuard tunnel.
		w := conn.GetMechanism().GetWireguard()
		if len(w.GetSrcPublicKey()) != 32 {
			return nil, errors.New("the request carries no client gateway WireGuard key (mechanism src_public_key)")
		}
		clientInner, err := innerAddr(w.GetSrcInnerIp())
		if err != nil {
			return nil, fmt.Errorf("the client's gateway's inner address (mechanism src_inner_ip): %w", err)
		}
		if !g.Inner.IsValid() {
			return nil, errors.New("this gateway has no inner address for Ethernet vWires across domains")
		}
		if vni == 0 {
			vni = g.freeVNI()
		}
		if end.MTU, err = g.innerMTU(); err != nil {
			return nil, err
		}
		end.VXLAN = &dataplane.VXLAN{VNI: vni, Local: g.Inner, Remote: clientInner}
		end.WireGuard = &dataplane.WireGuard{Peer: base64.StdEncoding.EncodeToString(w.GetSrcPublicKey()),
			Remote: []netip.Prefix{netip.PrefixFrom(clientInner, 128)}, Port: g.portOf(id)}
	case conn.GetPayload() == "ETHERNET" || (intraDomain(conn) && g.IntraDomain != "wireguard"):
		if conn.GetPayload() != "ETHERNET" {
			end.Routes = onLink(far) // IP on an L2 link: the far end is a neighbour
		}
		if vni == 0 {
			vni = g.freeVNI()
		}
		if end.MTU, err = g.pathMTU(dataplane.VXLANOverhead); err != nil {
			return nil, err
		}
		end.VXLAN = &dataplane.VXLAN{VNI: vni, Local: g.Addr, Remote: src}
		out.Mechanism = &proxypb.Mechanism{Type: &proxypb.Mechanism_Vxlan{Vxlan: &proxypb.VXLAN{
			SrcIp: src.String(), DstIp: g.Addr.String(), Vni: vni, DstPort: dataplane.VXLANPort}}}
	default:
		peer := conn.GetMechanism().GetWireguard().GetSrcPublicKey()
		if len(peer) != 32 {
			return nil, errors.New("the request carries no client gateway WireGuard key (mechanism src_public_key)")
		}
		if end.MTU, err = g.pathMTU(dataplane.WireGuardOverhead); err != nil {
			return nil, err
		}
		end.WireGuard = &dataplane.WireGuard{Peer: base64.StdEncoding.EncodeToString(peer), Remote: far, Port: g.portOf(id)}
	}
	if err := g.set(ctx, id, end, &record{EndpointURL: url,
		Src: got.GetIpContext().GetSrcIpAddrs(), Dst: got.GetIpContext().GetDstIpAddrs(), VNI: vni}); err != nil {
		if !known {
			g.closeEndpoint(ctx, url, conn.GetId())
		}
		return nil, err
	}
	if end.WireGuard != nil || local {
		port := g.keepPort(end)
		w := conn.GetMechanism().GetWireguard()
		answer := &proxypb.WireGuard{SrcIp: w.GetSrcIp(), SrcPort: w.GetSrcPort(), SrcPublicKey: w.GetSrcPublicKey(),
			DstIp: g.Addr.String(), DstPort: uint32(port), DstPublicKey: own}
		if end.VXLAN != nil { // Ethernet inside the tunnel
			answer.SrcInnerIp, answer.DstInnerIp, answer.Vni = w.GetSrcInnerIp(), g.Inner.String(), vni
		}
		out.Mechanism = &proxypb.Mechanism{Type: &proxypb.Mechanism_Wireguard{Wireguard: answer}}
	}
	out.Mtu = uint32(end.MTU)
	g.segment(out)
	return out, nil
}

// innerMTU is the MTU of an Ethernet vWire inside the WireGuard tunnel:
// VXLAN over the inner IPv6 addresses.
func (g *Gateway) innerMTU() (int, error) {
	mtu, err := g.pathMTU(dataplane.WireGuardOverhead)
	if err != nil {
		return 0, err
	}
	return dataplane.PathMTU(mtu, true, dataplane.VXLANOverhead)
}

// TunnelMTU is the MTU of an IP vWire through a WireGuard tunnel from this
// gateway, or why there is none that works.
func (g *Gateway) TunnelMTU() (int, error) {
	if !g.Addr.IsValid() {
		return 0, errNoAddress
	}
	return g.pathMTU(dataplane.WireGuardOverhead)
}

// pathMTU is the MTU of a vWire through a tunnel with overhead from this
// gateway's tunnel address.
func (g *Gateway) pathMTU(overhead int) (int, error) {
	return dataplane.PathMTU(g.OuterMTU, g.Addr.Is6(), overhead)
}

// intraDomain says whether the client is of the endpoint's domain: its
// request passed one proxy only.
func intraDomain(conn *proxypb.Connection) bool {
	proxies := 0
	for _, s := range conn.GetPath().GetSegments() {
		if strings.HasPrefix(s.GetName(), "proxy.") {
			proxies++
		}
	}
	return proxies == 1
}

// onLink routes far directly on the end's interface.
func onLink(far []netip.Prefix) []dataplane.Route {
	routes := make([]dataplane.Route, 0, len(far))
	for _, p := range far {
		routes = append(routes, dataplane.Route{Prefix: p})
	}
	return routes
}

// segment adds the gateway's path segment after the endpoint domain's
// proxy, living as long as that proxy's.
func (g *Gateway) segment(conn *proxypb.Connection) {
	if conn.Path == nil {
		conn.Path = &proxypb.Path{}
	}
	seg := &proxypb.PathSegment{Name: "gateway." + g.Node, SpiffeId: g.SpiffeID, Url: g.URL}
	if n := len(conn.Path.Segments); n > 0 {
		seg.Expires = conn.Path.Segments[n-1].GetExpires()
	}
	conn.Path.Segments = append(conn.Path.Segments, seg)
}

// applyClient programs the client's end with what the endpoint's side
// answered.
func (g *Gateway) applyClient(ctx context.Context, conn *proxypb.Connection) (*proxypb.Connection, error) {
	id := endID(proxy.ClientSide, conn.GetId())
	g.mu.Lock()
	k := g.waiting[conn.GetId()]
	g.mu.Unlock()
	end := dataplane.End{ID: id}
	var err error
	if k != nil {
		end.NetNS, end.Interface = k.GetNetns(), k.GetInterfaceName()
		if end.Accept, err = ParseAccept(k.GetAcceptRoutes()); err != nil {
			return nil, err
		}
	} else if prev, ok := g.reconciler.Get(id); ok {
		end.NetNS, end.Interface, end.Accept = prev.NetNS, prev.Interface, prev.Accept
	} else {
		return nil, fmt.Errorf("connection %s has no workload on this gateway (request it through the gateway's socket)", conn.GetId())
	}
	// What the endpoint's side answered, checked before anything of it is
	// programmed.
	ethernet := conn.GetPayload() == "ETHERNET"
	if end.Addrs, err = prefixes(conn.GetIpContext().GetSrcIpAddrs()); err == nil {
		err = ownAddrs("the client's", end.Addrs, ethernet)
	}
	if err != nil {
		return nil, fmt.Errorf("the endpoint's side answered: %w", err)
	}
	far, err := prefixes(conn.GetIpContext().GetDstIpAddrs())
	if err == nil {
		far, err = farRoutes("the endpoint's", far, ethernet, end.Accept)
	}
	if err != nil {
		return nil, fmt.Errorf("the endpoint's side answered: %w", err)
	}
	end.MTU = int(conn.GetMtu())
	own, _ := base64.StdEncoding.DecodeString(g.PublicKey())
	switch m := conn.GetMechanism(); {
	case bytes.Equal(m.GetWireguard().GetDstPublicKey(), own): // the endpoint is on this gateway too
		if conn.GetPayload() == "ETHERNET" {
			end.Bridge = endID(proxy.EndpointSide, conn.GetId()) // its bridge
		} else {
			end.Routed = far
		}
		end.MTU = g.OuterMTU
	case m.GetWireguard() != nil:
		w := m.GetWireguard()
		dst, err := tunnelAddr(w.GetDstIp())
		if err != nil || len(w.GetDstPublicKey()) != 32 || w.GetDstPort() == 0 || w.GetDstPort() > 65535 {
			return nil, fmt.Errorf("the endpoint's side answered an incomplete or bad WireGuard mechanism (%v; address: %v)", w, err)
		}
		end.WireGuard = &dataplane.WireGuard{Peer: base64.StdEncoding.EncodeToString(w.GetDstPublicKey()),
			Endpoint: netip.AddrPortFrom(dst, uint16(w.GetDstPort())), Remote: far, Port: g.portOf(id)}
		mtu, err := g.pathMTU(dataplane.WireGuardOverhead)
		if ethernet {
			// VXLAN between the gateways' inner addresses, inside the tunnel.
			inner, ierr := innerAddr(w.GetDstInnerIp())
			if ierr != nil || !validVNI(w.GetVni()) || !g.Inner.IsValid() {
				return nil, fmt.Errorf("the endpoint's side answered an incomplete WireGuard mechanism for an Ethernet vWire (inner address %q: %v, VNI %d)", w.GetDstInnerIp(), ierr, w.GetVni())
			}
			end.VXLAN = &dataplane.VXLAN{VNI: w.GetVni(), Local: g.Inner, Remote: inner}
			end.WireGuard.Remote = []netip.Prefix{netip.PrefixFrom(inner, 128)}
			mtu, err = g.innerMTU()
		}
		if err != nil {
			return nil, err
		}
		end.MTU = min(end.MTU, mtu)
	case m.GetVxlan() != nil && ethernet && !intraDomain(conn) && !conn.GetPlainVxlan():
		return nil, errors.New("the endpoint's side answered plain VXLAN for an Ethernet vWire across domains, which its service does not declare (plainVxlan): refused, as it would cross unencrypted")
	case m.GetVxlan() != nil:
		v := m.GetVxlan()
		dst, err := tunnelAddr(v.GetDstIp())
		if err != nil || !validVNI(v.GetVni()) {
			return nil, fmt.Errorf("the endpoint's side answered an incomplete or bad VXLAN mechanism (%v; address: %v)", v, err)
		}
		end.VXLAN = &dataplane.VXLAN{VNI: v.GetVni(), Local: g.Addr, Remote: dst}
		if conn.GetPayload() != "ETHERNET" {
			end.Routes = onLink(far)
		}
		mtu, err := g.pathMTU(dataplane.VXLANOverhead)
		if err != nil {
			return nil, err
		}
		end.MTU = min(end.MTU, mtu)
	default:
		return nil, fmt.Errorf("the endpoint's side answered no tunnel mechanism")
	}
	_, existed := g.reconciler.Get(id)
	if err := g.set(ctx, id, end, &record{}); err != nil {
		return nil, err
	}
	if end.WireGuard != nil && !existed {
		if err := g.handshake(ctx, id, end.WireGuard.Endpoint); err != nil {
			_ = g.Remove(ctx, proxy.ClientSide, conn) // nothing half-programmed stays
			return nil, err
		}
	}
	g.keepPort(end)
	out := proto.Clone(conn).(*proxypb.Connection)
	out.Mtu = uint32(end.MTU)
	return out, nil
}

// handshake waits until the tunnel of a new end has a live session with
// the peer gateway at peer: the side that knows the peer's address
// handshakes at once (WireGuard is silent otherwise, and a vWire into a
// gateway that cannot be reached would look up but carry nothing). A
// session younger than WireGuard's reject-after time (3 min) counts, so a
// second vWire through a working tunnel does not wait.
func (g *Gateway) handshake(ctx context.Context, id string, peer netip.AddrPort) error {
	timeout := g.HandshakeTimeout
	if timeout == 0 {
		timeout = DefaultHandshakeTimeout
	}
	deadline := time.Now().Add(timeout)
	for wait := time.Millisecond; ; wait = min(2*wait, 10*time.Millisecond) {
		if at := g.tunneler.Handshake(id); time.Since(at) < 3*time.Minute {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the endpoint's gateway at %s does not answer WireGuard (no handshake within %v): is UDP port %d open to it, and is %s its address?",
				peer, timeout, peer.Port(), peer.Addr())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// set programs end and records it; a new end that fails is not kept.
func (g *Gateway) set(ctx context.Context, id string, end dataplane.End, rec *record) (err error) {
	ctx, span := tracing.Span(ctx, "program vWire end", attribute.String("vwire.end", id), attribute.String("vwire.node", g.Node),
		attribute.String("vwire.tunnel", end.Tunnel()), attribute.Int("vwire.mtu", end.MTU), attribute.String("vwire.interface", end.Interface))
	defer span.End()
	defer func() { tracing.Fail(span, err) }()
	g.life.RLock()
	defer g.life.RUnlock()
	if g.stopping {
		return errStopping
	}
	_, existed := g.reconciler.Get(id)
	// The record first, the end second (Remove undoes them the other way
	// round): a crash between the two writes leaves a record with no end,
	// which the next start undoes, never an end the gateway knows nothing
	// of. The kernel is programmed meanwhile.
	g.mu.Lock()
	old := g.records[id]
	changed := old == nil || old.EndpointURL != rec.EndpointURL || old.VNI != rec.VNI ||
		!slices.Equal(old.Src, rec.Src) || !slices.Equal(old.Dst, rec.Dst) // a refresh writes nothing
	var n uint64
	if changed {
		if n, err = g.file.Put(id, rec); err != nil {
			g.mu.Unlock()
			return err
		}
		g.records[id] = rec
	}
	g.mu.Unlock()
	err = g.reconciler.SetAfter(ctx, end, func() error {
		if changed {
			if err := g.file.Save(n); err != nil {
				return err
			}
		}
		crashpoint.Here("gateway-set")
		return nil
	})
	if err != nil {
		if !existed {
			_ = g.reconciler.Delete(ctx, id) // nothing half-programmed stays
		}
		if changed {
			g.restore(id, rec, old)
		}
		return err
	}
	return nil
}

// restore puts back end id's record as it was (nil: none) where it is
// still rec, and writes it (best effort: the change it undoes failed or
// was not written).
func (g *Gateway) restore(id string, rec, old *record) {
	g.mu.Lock()
	if g.records[id] != rec {
		g.mu.Unlock()
		return
	}
	var n uint64
	if old == nil {
		delete(g.records, id)
		n = g.file.Delete(id)
	} else {
		g.records[id] = old
		n, _ = g.file.Put(id, old)
	}
	g.mu.Unlock()
	_ = g.file.Save(n)
}

// keepPort records the port the backend chose for end's WireGuard device,
// so that a restarted gateway listens where its peer sends; it returns it.
func (g *Gateway) keepPort(end dataplane.End) int {
	port := g.tunneler.ListenPort(end.ID)
	if w := end.WireGuard; w != nil && w.Port != port {
		kept := *w
		kept.Port, end.WireGuard = port, &kept
		if err := g.reconciler.Remember(end); err != nil {
			g.log.Warn("recording the WireGuard port failed; a restart may listen elsewhere", "id", end.ID, "err", err)
		}
	}
	return port
}

func (g *Gateway) portOf(id string) int {
	if e, ok := g.reconciler.Get(id); ok && e.WireGuard != nil {
		return e.WireGuard.Port
	}
	return 0
}

// freeVNI picks a VNI no end of this gateway uses.
func (g *Gateway) freeVNI() uint32 {
	used := map[uint32]bool{}
	for _, e := range g.reconciler.Desired() {
		if e.VXLAN != nil {
			used[e.VXLAN.VNI] = true
		}
	}
	for {
		var b [4]byte
		rand.Read(b[:])
		if vni := 1 + binary.BigEndian.Uint32(b[:])%(1<<24-1); !used[vni] {
			return vni
		}
	}
}

// Remove implements proxy.Dataplane.
func (g *Gateway) Remove(ctx context.Context, side proxy.Side, conn *proxypb.Connection) error {
	connID := conn.GetId()
	id := endID(side, connID)
	g.mu.Lock()
	rec := g.records[id]
	g.mu.Unlock()
	end, _ := g.reconciler.Get(id)
	if err := g.reconciler.Delete(ctx, id); err != nil {
		return err
	}
	crashpoint.Here("gateway-remove")
	g.unpin(end)
	if rec != nil && rec.EndpointURL != "" {
		g.closeEndpoint(ctx, rec.EndpointURL, connID)
	}
	g.mu.Lock()
	delete(g.records, id)
	n := g.file.Delete(id)
	g.mu.Unlock()
	return g.file.Save(n)
}

func (g *Gateway) closeEndpoint(ctx context.Context, url, connID string) {
	// A stuck endpoint must not hold up the removal of the end, nor a
	// stopping gateway (RemoveAll has no deadline of its own).
	ctx, cancel := context.WithTimeout(ctx, endpointCloseTimeout)
	defer cancel()
	nse, err := g.dialEndpoint(url)
	if err == nil {
		_, err = proxypb.NewNetworkServiceClient(nse).Close(ctx, &proxypb.Connection{Id: connID})
	}
	if err != nil {
		g.log.WarnContext(ctx, "telling the endpoint a connection closed failed; it keeps the addresses until it restarts", "id", connID, "endpoint", url, "err", err)
	}
}

// dialEndpoint connects to a local endpoint's unix socket. Endpoints are
// workloads on this node: the gateway dials nothing else.
func (g *Gateway) dialEndpoint(url string) (*grpc.ClientConn, error) {
	if !strings.HasPrefix(url, "unix://") {
		return nil, fmt.Errorf("its URL %q is not a unix socket on this node (unix://PATH)", url)
	}
	return g.nses.Get(url, func() (*grpc.ClientConn, error) {
		// An endpoint in a container hands its namespace on its socket.
		return grpc.NewClient(url, slices.Concat(g.DialOptions, []grpc.DialOption{grpc.WithTransportCredentials(handover.ReceiveNS())})...)
	})
}

// pin keeps the namespace a workload handed (h) for end id, after checking
// it, and returns its path.
func (g *Gateway) pin(h *handover.Handed, id string) (string, error) {
	if h == nil || h.NS == nil {
		return "", errors.New("it named no network namespace and handed none over its socket")
	}
	if g.Pins == nil {
		return "", errors.New("this gateway takes no handed network namespaces; name one (--netns)")
	}
	if err := handover.CheckHanded(h.NS); err != nil {
		return "", err
	}
	return g.Pins.Pin(h.NS, id)
}

func (g *Gateway) checkNamespace(ns string) error {
	if g.CheckNamespace == nil {
		return nil
	}
	return g.CheckNamespace(ns)
}

// unpin lets a handed namespace of end go, once nothing of end is left.
func (g *Gateway) unpin(end dataplane.End) {
	if g.Pins != nil && g.Pins.Pinned(end.NetNS) {
		g.Pins.Unpin(end.NetNS)
	}
}

// SweepPins removes pins that no desired end uses (left by a gateway that
// stopped before it could remove them).
func (g *Gateway) SweepPins() {
	if g.Pins == nil {
		return
	}
	used := map[string]bool{}
	for _, e := range g.reconciler.Desired() {
		used[e.NetNS] = true
	}
	for _, p := range g.Pins.List() {
		if !used[p] {
			g.Pins.Unpin(p)
		}
	}
}

var errStopping = errors.New("the gateway is stopping")

// endpointCloseTimeout bounds telling an endpoint that a connection closed.
const endpointCloseTimeout = 2 * time.Second

// RemoveAll removes every end (a domain stopping without
// --keep-dataplane), once the ends being programmed are; from then on the
// gateway programs none.
func (g *Gateway) RemoveAll(ctx context.Context) {
	g.life.Lock()
	g.stopping = true
	g.life.Unlock()
	for _, e := range g.reconciler.Desired() {
		side, connID, _ := strings.Cut(e.ID, "-")
		s := proxy.ClientSide
		if side == "e" {
			s = proxy.EndpointSide
		}
		if err := g.Remove(ctx, s, &proxypb.Connection{Id: connID}); err != nil {
			g.log.Warn("removing a vWire end failed", "id", e.ID, "err", err)
		}
	}
}

// Close closes the gateway's connections to endpoints and its state files
// (not the ends).
func (g *Gateway) Close() error {
	g.nses.Close()
	return errors.Join(g.file.Close(), g.reconciler.Close())
}

func sourceOf(m *proxypb.Mechanism) netip.Addr {
	s := m.GetWireguard().GetSrcIp()
	if s == "" {
		s = m.GetVxlan().GetSrcIp()
	}
	a, _ := netip.ParseAddr(s)
	return a
}

func prefixes(ss []string) ([]netip.Prefix, error) {
	if len(ss) > MaxAddrs {
		return nil, fmt.Errorf("%d addresses, at most %d", len(ss), MaxAddrs)
	}
	var out []netip.Prefix
	for _, s := range ss {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("address %q: want an address with its prefix length", s)
		}
		out = append(out, p)
	}
	return out, nil
}
