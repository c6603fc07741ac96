package proxy

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/proxy/proxypb"
	"github.com/vwire/vwire/registry"
	"github.com/vwire/vwire/registry/registrypb"
)

// LocalGateway is what vwire diagnose asks the gateway in the proxy's
// process.
type LocalGateway interface {
	// TunnelMTU is the MTU of an IP vWire through a WireGuard tunnel,
	// or why none works.
	TunnelMTU() (int, error)
	// Tunnel is the WireGuard tunnel to the peer gateway with key key
	// (ok false: none).
	Tunnel(key []byte) (TunnelStats, bool)
	// EndCounters are end id's interface counters (ok false: no such end
	// on it).
	EndCounters(id string) (*proxypb.InterfaceCounters, bool)
}

// TunnelStats is a WireGuard tunnel to a peer gateway: its last handshake
// (zero: none yet) and bytes each way.
type TunnelStats struct {
	LastHandshake  time.Time
	Sent, Received int64
}

// Operator is the domain's administrator's API on its proxy: vwire
// diagnose walks the path a request would take, hop by hop, with the
// proxy's own DNS view, federation, identity and gateway.
type Operator struct {
	proxypb.UnimplementedOperatorServer
	Own      string
	TD       spiffeid.TrustDomain
	Resolver *Resolver
	Peers    *federation.Peers
	Pool     *Pool
	Store    *registry.Store
	Conns    *Connections
	Source   federation.Source // the proxy's SVID
	Etcd     *clientv3.Client  // the domain's etcd
	Server   *Server           // the proxy's network service, for its recent failures
	Gateway  LocalGateway      // nil: none in this process
}

// StaleHandshake is how old a busy tunnel's last handshake may be:
// WireGuard shakes hands every two minutes while packets flow.
const StaleHandshake = 3 * time.Minute

// diagnosis is one walk of Diagnose: what a request for name from client
// would meet, hop by hop, and the steps so far.
type diagnosis struct {
	o      *Operator
	ctx    context.Context
	name   registry.Name
	labels map[string]string // the client's, with those its domain adds
	client spiffeid.ID
	// What the service's domain selects for the client, asked once for
	// the peer-proxy, service, policy and endpoints hops.
	eps     []*registrypb.Endpoint
	findErr error

	steps  []*proxypb.DiagnoseStep
	failed bool
}

// Diagnose implements proxypb.OperatorServer.
func (o *Operator) Diagnose(ctx context.Context, req *proxypb.DiagnoseRequest) (*proxypb.DiagnoseResponse, error) {
	if err := o.admin(ctx, "diagnose"); err != nil {
		return nil, err
	}
	name, err := registry.ParseName(req.GetNetworkService())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if err := registry.ValidateLabels(req.GetLabels()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "labels: %v", err)
	}
	client := spiffeid.RequireFromPath(o.TD, "/workload/uid/0")
	if req.GetClientId() != "" {
		if client, err = spiffeid.FromString(req.GetClientId()); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "client ID %q: %v", req.GetClientId(), err)
		}
	}
	d := &diagnosis{o: o, ctx: ctx, name: name, labels: ClientLabels(req.GetLabels(), o.Own), client: client}
	remote := name.Domain != "" && name.Domain != o.Own
	if remote {
		d.hop("dns", d.dns)
		d.hop("federation", d.federation)
	}
	if !d.failed {
		d.eps, d.findErr = d.find()
	}
	if remote {
		d.hop("peer-proxy", d.peerProxy)
	}
	d.hop("service", d.service)
	d.hop("policy", d.policy)
	d.hop("endpoints", d.endpoints)
	d.hop("mtu", o.mtu)
	if remote {
		d.hop("data-plane", func() (string, string, error) { return o.dataPlane(ctx, name.Domain) })
	}
	return &proxypb.DiagnoseResponse{Steps: d.steps}, nil
}

// hop checks one hop, unless an earlier one failed: check says what it
// found, or why it fails and what to do (errSkipped: nothing to check).
func (d *diagnosis) hop(name string, check func() (detail, advice string, err error)) {
	out := &proxypb.DiagnoseStep{Hop: name, Result: proxypb.DiagnoseStep_SKIPPED, Detail: "an earlier hop failed"}
	d.steps = append(d.steps, out)
	if d.failed {
		return
	}
	detail, advice, err := check()
	switch {
	case errors.Is(err, errSkipped):
		out.Detail = detail
	case err != nil:
		out.Result, out.Detail, out.Advice, d.failed = proxypb.DiagnoseStep_FAILED, err.Error(), advice, true
	default:
		out.Result, out.Detail = proxypb.DiagnoseStep_OK, detail
	}
}

// errSkipped: a hop with nothing to check (its detail says why).
var errSkipped = errors.New("skipped")

// dns looks the domain's proxies up as a request would.
func (d *diagnosis) dns() (string, string, error) {
	domain := d.name.Domain
	server, _ := d.o.Resolver.server()
	targets, err := d.o.Resolver.Lookup(d.ctx, domain)
	switch {
	case errors.Is(err, ErrUnknownDomain):
		return "", fmt.Sprintf("publish SRV records %s.%s for its proxies in its zone, or point --dns-server at a DNS server that has them", ProxyService, domain),
			fmt.Errorf("%v (asked the DNS server %s)", err, server)
	case err != nil:
		return "", fmt.Sprintf("check that the DNS server %s answers this host (--dns-server)", server), err
	}
	var addrs []string
	for _, t := range targets {
		addrs = append(addrs, fmt.Sprintf("%s:%d %v", t.Host, t.Port, t.Addrs))
	}
	return fmt.Sprintf("%s.%s: %s (from %s)", ProxyService, domain, strings.Join(addrs, ", "), server), "", nil
}

// federation checks the peer is federated and its bundle trusted.
func (d *diagnosis) federation() (string, string, error) {
	domain := d.name.Domain
	for _, st := range d.o.Peers.List() {
		if st.Domain != domain {
			continue
		}
		switch {
		case st.Source == "":
			return "", "vwire federation list shows why its bundle cannot be fetched; check its bundle endpoint (vwire federation add again with the right --bundle-endpoint)",
				fmt.Errorf("no bundle of %s's trust domain %q is trusted here: %s", domain, st.TrustDomain.Name(), st.LastError)
		case time.Now().After(st.Expires):
			return "", fmt.Sprintf("fetch its bundle again: check that %s answers (vwire federation list)", st.BundleEndpointURL),
				fmt.Errorf("%s's bundle expired at %s; the last fetch: %s", domain, st.Expires.UTC().Format(time.RFC3339), cmp.Or(st.LastError, "succeeded"))
		}
		detail := fmt.Sprintf("trust domain %q, %d authorities from %s, expiring %s", st.TrustDomain.Name(), st.Authorities, st.Source, st.Expires.UTC().Format(time.RFC3339))
		if st.LastError != "" {
			detail += "; the last refresh failed: " + st.LastError
		}
		return detail, "", nil
	}
	return "", fmt.Sprintf("vwire federation add %s --bundle-endpoint URL --bundle FILE", domain),
		fmt.Errorf("%s is not federated with %s", domain, d.o.Own)
}

// find asks the service's domain which endpoints its rules select for the
// client, as a request would.
func (d *diagnosis) find() ([]*registrypb.Endpoint, error) {
	o := d.o
	if d.name.Domain == "" || d.name.Domain == o.Own {
		svc, err := o.Store.GetService(d.ctx, d.name.Service)
		if err == nil {
			err = registry.Authorize(svc, d.client, o.TD, o.Peers)
		}
		var eps []*registrypb.Endpoint
		if err == nil {
			eps, err = o.Store.Find(d.ctx, d.name.Service, d.labels)
		}
		return eps, registry.ToStatus(err)
	}
	pc, err := o.Pool.Conn(d.ctx, d.name.Domain)
	if err != nil {
		return nil, toStatus(d.name.Domain, err)
	}
	ctx := metadata.NewOutgoingContext(d.ctx, metadata.Pairs(registry.ClientHeader, d.client.String()))
	stream, err := registrypb.NewRegistryClient(pc).Find(ctx, &registrypb.FindRequest{Service: d.name.Service, SourceLabels: d.labels})
	if err != nil {
		return nil, err
	}
	resp, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		err = status.Error(codes.Unavailable, "the peer's proxy closed the look-up without an answer")
	}
	return resp.GetSnapshot().GetEndpoints(), err
}

// peerProxy: the peer's proxy answers this domain's proxy over mTLS.
func (d *diagnosis) peerProxy() (string, string, error) {
	o, domain := d.o, d.name.Domain
	st := status.Convert(d.findErr)
	reason, _ := reasonGiven(st)
	switch {
	case d.findErr == nil, st.Code() == codes.NotFound, reason == ReasonPolicy:
		return fmt.Sprintf("%s's proxy answered %s (as %s)", domain, o.Own, federation.ProxyID(o.TD)), "", nil
	case st.Code() == codes.PermissionDenied:
		return "", fmt.Sprintf("on %s: vwire federation add %s, with this domain's bundle (vwire federation bundle)", domain, o.Own),
			fmt.Errorf("%s's proxy refuses this domain's proxy: %s", domain, st.Message())
	}
	// Why the call failed, from a handshake of our own: the gRPC error
	// of a refused TLS 1.3 client certificate is a broken pipe.
	err := o.probe(d.ctx, domain)
	switch {
	case errors.Is(err, federation.ErrPeerRefusesUs):
		return "", fmt.Sprintf("%s must federate with %s and trust its current bundle (on %s: vwire federation add %s, vwire federation list)", domain, o.Own, domain, o.Own),
			fmt.Errorf("%s's proxy refuses this domain's ID (%s): %v", domain, federation.ProxyID(o.TD), err)
	case errors.Is(err, federation.ErrPeerUntrusted):
		return "", fmt.Sprintf("check the trust domain and endpoint ID this domain has for %s, and that its bundle is current (vwire federation list)", domain),
			fmt.Errorf("%s's proxy does not prove it is %s's: %v", domain, domain, err)
	case err != nil:
		return "", fmt.Sprintf("check that %s's proxies (the dns hop) are reachable on TCP from here", domain),
			fmt.Errorf("%s's proxy did not answer: %v", domain, err)
	}
	return "", fmt.Sprintf("check that %s's proxies (the dns hop) are reachable and up", domain),
		fmt.Errorf("%s's proxy did not answer: %s", domain, st.Message())
}

// probe handshakes with the first of domain's proxies as a request would.
func (o *Operator) probe(ctx context.Context, domain string) error {
	targets, err := o.Resolver.Lookup(ctx, domain)
	if err != nil {
		return err
	}
	peer, ok := o.Peers.Lookup(domain)
	if !ok || o.Source == nil {
		return fmt.Errorf("%s is not federated", domain)
	}
	return federation.ProbePeer(ctx, targets[0].Addresses()[0], o.Source, peer)
}

func (d *diagnosis) service() (string, string, error) {
	if st := status.Convert(d.findErr); st.Code() == codes.NotFound {
		return "", fmt.Sprintf("%s's administrator defines %s (vwire apply), or ask for a service it has (vwire get services there)", cmp.Or(d.name.Domain, d.o.Own), d.name.Service),
			errors.New(st.Message())
	}
	return fmt.Sprintf("network service %q is defined", d.name.Service), "", nil
}

func (d *diagnosis) policy() (string, string, error) {
	st := status.Convert(d.findErr)
	if reason, _ := reasonGiven(st); reason == ReasonPolicy {
		return "", fmt.Sprintf("the service's allowedSpiffeIDs must admit %s (or diagnose as a client it admits: --client-id)", d.client),
			errors.New(st.Message())
	}
	if d.findErr != nil {
		return "", "", d.findErr
	}
	return fmt.Sprintf("its policy admits %s", d.client), "", nil
}

func (d *diagnosis) endpoints() (string, string, error) {
	if len(d.eps) == 0 {
		return "", "register an endpoint of the service whose labels its match rules select for these, or connect with other --labels (vwire get endpoints --service ... --source-labels ...)",
			fmt.Errorf("no endpoint of %q matches labels %v", d.name.Service, d.labels)
	}
	var names []string
	for _, ep := range d.eps {
		names = append(names, ep.GetName())
	}
	return "selected: " + strings.Join(names, ", "), "", nil
}

// mtu: the gateway's tunnels leave a usable MTU.
func (o *Operator) mtu() (string, string, error) {
	if o.Gateway == nil {
		return "no gateway in this process: see the nodes' vwire gateway logs", "", errSkipped
	}
	mtu, err := o.Gateway.TunnelMTU()
	if err != nil {
		return "", "the gateway's tunnels need a link with a larger MTU (that of --gateway-address's interface), or a tunnel address at all", err
	}
	return fmt.Sprintf("a WireGuard vWire from this gateway gets MTU %d", mtu), "", nil
}

// RecentFailure is how long a data-plane failure of a request to a
// domain stands in diagnose's data-plane hop unless one succeeds since.
const RecentFailure = 10 * time.Minute

// dataPlane: the last request to domain did not fail in the data plane
// (the gateways' WireGuard handshake, above all), and the tunnels of this
// domain's live vWires to it shake hands.
func (o *Operator) dataPlane(ctx context.Context, domain string) (string, string, error) {
	if msg, at, ok := o.Server.lastFailure(domain); ok && time.Since(at) < RecentFailure {
		return "", "UDP between the gateways must pass both ways (a firewall or NAT in between?), and each must reach the other's --gateway-address",
			fmt.Errorf("the last vWire to %s failed %v ago in the data plane: %s", domain, time.Since(at).Round(time.Second), msg)
	}
	if o.Gateway == nil {
		return "no gateway in this process: see vwire_gateway_peer_last_handshake_age_seconds of the nodes' gateways", "", errSkipped
	}
	conns, _, err := o.Conns.List(ctx)
	if err != nil {
		return "", "", err
	}
	checked := 0
	type tunnel struct {
		TunnelStats
		here bool
	}
	tunnels := map[string]tunnel{} // by peer key: each device is asked once
	for _, c := range conns {
		wg := c.GetMechanism().GetWireguard()
		if wg == nil || keyOf(c, o.Own, o.TD).remote != domain {
			continue
		}
		key := string(wg.GetDstPublicKey())
		tun, asked := tunnels[key]
		if !asked {
			tun.TunnelStats, tun.here = o.Gateway.Tunnel(wg.GetDstPublicKey())
			tunnels[key] = tun
		}
		if !tun.here {
			continue // through another node's gateway
		}
		at := tun.LastHandshake
		checked++
		peer := net.JoinHostPort(wg.GetDstIp(), strconv.Itoa(int(wg.GetDstPort())))
		if at.IsZero() || time.Since(at) > StaleHandshake {
			when := "never"
			if !at.IsZero() {
				when = time.Since(at).Round(time.Second).String() + " ago"
			}
			return "", fmt.Sprintf("UDP between this gateway and %s must pass both ways (a firewall or NAT in between?)", peer),
				fmt.Errorf("the WireGuard tunnel to %s's gateway at %s last completed a handshake %s", domain, peer, when)
		}
	}
	if checked == 0 {
		return fmt.Sprintf("no vWire to %s through this gateway now: connect one, then diagnose again", domain), "", errSkipped
	}
	return fmt.Sprintf("%d vWire(s) to %s: their tunnels shook hands within %v", checked, domain, StaleHandshake), "", nil
}
