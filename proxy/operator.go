package proxy

import (
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

// step is one hop's check: it returns what it found, or an error and
// what to do about it.
type step struct {
	hop   string
	check func() (detail string, advice string, err error)
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
	remote := name.Domain != "" && name.Domain != o.Own
	var steps []step
	if remote {
		steps = append(steps, o.dnsStep(ctx, name.Domain), o.federationStep(name.Domain))
	}
	f := &find{o: o, ctx: ctx, name: name, labels: req.GetLabels(), client: client, remote: remote}
	if remote {
		steps = append(steps, step{"peer-proxy", f.peerProxy})
	}
	steps = append(steps, step{"service", f.service}, step{"policy", f.policy}, step{"endpoints", f.endpoints}, step{"mtu", o.mtu})
	if remote {
		steps = append(steps, step{"data-plane", func() (string, string, error) { return o.dataPlane(ctx, name.Domain) }})
	}
	resp := &proxypb.DiagnoseResponse{}
	failed := false
	for _, s := range steps {
		out := &proxypb.DiagnoseStep{Hop: s.hop, Result: proxypb.DiagnoseStep_SKIPPED, Detail: "an earlier hop failed"}
		if !failed {
			detail, advice, err := s.check()
			switch {
			case errors.Is(err, errSkipped):
				out.Detail = detail
			case err != nil:
				out.Result, out.Detail, out.Advice, failed = proxypb.DiagnoseStep_FAILED, err.Error(), advice, true
			default:
				out.Result, out.Detail = proxypb.DiagnoseStep_OK, detail
			}
		}
		resp.Steps = append(resp.Steps, out)
	}
	return resp, nil
}

// errSkipped: a hop with nothing to check (its detail says why).
var errSkipped = errors.New("skipped")

// dnsStep looks the domain's proxies up as a request would.
func (o *Operator) dnsStep(ctx context.Context, domain string) step {
	return step{"dns", func() (string, string, error) {
		server, _ := o.Resolver.server()
		targets, err := o.Resolver.Lookup(ctx, domain)
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
	}}
}

// federationStep checks the peer is federated and its bundle trusted.
func (o *Operator) federationStep(domain string) step {
	return step{"federation", func() (string, string, error) {
		for _, st := range o.Peers.List() {
			if st.Domain != domain {
				continue
			}
			switch {
			case st.Source == "":
				return "", "vwire federation list shows why its bundle cannot be fetched; check its bundle endpoint (vwire federation add again with the right --bundle-endpoint)",
					fmt.Errorf("no bundle of %s's trust domain %q is trusted here: %s", domain, st.TrustDomain.Name(), st.LastError)
			case time.Now().After(st.Expires):
				return "", fmt.Sprintf("fetch its bundle again: check that %s answers (vwire federation list)", st.BundleEndpointURL),
					fmt.Errorf("%s's bundle expired at %s; the last fetch: %s", domain, st.Expires.UTC().Format(time.RFC3339), cmpOr(st.LastError, "succeeded"))
			}
			detail := fmt.Sprintf("trust domain %q, %d authorities from %s, expiring %s", st.TrustDomain.Name(), st.Authorities, st.Source, st.Expires.UTC().Format(time.RFC3339))
			if st.LastError != "" {
				detail += "; the last refresh failed: " + st.LastError
			}
			return detail, "", nil
		}
		return "", fmt.Sprintf("vwire federation add %s --bundle-endpoint URL --bundle FILE", domain),
			fmt.Errorf("%s is not federated with %s", domain, o.Own)
	}}
}

func cmpOr(s, otherwise string) string {
	if s == "" {
		return otherwise
	}
	return s
}

// find asks the service's domain which endpoints its rules select for the
// client, as a request would, once; the steps read its answer.
type find struct {
	o      *Operator
	ctx    context.Context
	name   registry.Name
	labels map[string]string
	client spiffeid.ID
	remote bool

	done bool
	eps  []*registrypb.Endpoint
	err  error
}

func (f *find) run() {
	if f.done {
		return
	}
	f.done = true
	labels := ClientLabels(f.labels, f.o.Own)
	if !f.remote {
		svc, err := f.o.Store.GetService(f.ctx, f.name.Service)
		if err == nil {
			err = registry.Authorize(svc, f.client, f.o.TD, f.o.Peers)
		}
		if err == nil {
			f.eps, err = f.o.Store.Find(f.ctx, f.name.Service, labels)
		}
		f.err = registry.ToStatus(err)
		return
	}
	pc, err := f.o.Pool.Conn(f.ctx, f.name.Domain)
	if err != nil {
		f.err = toStatus(f.name.Domain, err)
		return
	}
	ctx := metadata.NewOutgoingContext(f.ctx, metadata.Pairs(registry.ClientHeader, f.client.String()))
	stream, err := registrypb.NewRegistryClient(pc).Find(ctx, &registrypb.FindRequest{Service: f.name.Service, SourceLabels: labels})
	if err != nil {
		f.err = err
		return
	}
	resp, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		err = status.Error(codes.Unavailable, "the peer's proxy closed the look-up without an answer")
	}
	f.eps, f.err = resp.GetSnapshot().GetEndpoints(), err
}

// peerProxy: the peer's proxy answers this domain's proxy over mTLS.
func (f *find) peerProxy() (string, string, error) {
	f.run()
	st := status.Convert(f.err)
	reason, _ := reasonGiven(st)
	switch {
	case f.err == nil, st.Code() == codes.NotFound, reason == ReasonPolicy:
		return fmt.Sprintf("%s's proxy answered %s (as %s)", f.name.Domain, f.o.Own, federation.ProxyID(f.o.TD)), "", nil
	case st.Code() == codes.PermissionDenied:
		return "", fmt.Sprintf("on %s: vwire federation add %s, with this domain's bundle (vwire federation bundle)", f.name.Domain, f.o.Own),
			fmt.Errorf("%s's proxy refuses this domain's proxy: %s", f.name.Domain, st.Message())
	}
	// Why the call failed, from a handshake of our own: the gRPC error
	// of a refused TLS 1.3 client certificate is a broken pipe.
	err := f.o.probe(f.ctx, f.name.Domain)
	switch {
	case errors.Is(err, federation.ErrPeerRefusesUs):
		return "", fmt.Sprintf("%s must federate with %s and trust its current bundle (on %s: vwire federation add %s, vwire federation list)", f.name.Domain, f.o.Own, f.name.Domain, f.o.Own),
			fmt.Errorf("%s's proxy refuses this domain's ID (%s): %v", f.name.Domain, federation.ProxyID(f.o.TD), err)
	case errors.Is(err, federation.ErrPeerUntrusted):
		return "", fmt.Sprintf("check the trust domain and endpoint ID this domain has for %s, and that its bundle is current (vwire federation list)", f.name.Domain),
			fmt.Errorf("%s's proxy does not prove it is %s's: %v", f.name.Domain, f.name.Domain, err)
	case err != nil:
		return "", fmt.Sprintf("check that %s's proxies (the dns hop) are reachable on TCP from here", f.name.Domain),
			fmt.Errorf("%s's proxy did not answer: %v", f.name.Domain, err)
	}
	return "", fmt.Sprintf("check that %s's proxies (the dns hop) are reachable and up", f.name.Domain),
		fmt.Errorf("%s's proxy did not answer: %s", f.name.Domain, st.Message())
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

func (f *find) service() (string, string, error) {
	f.run()
	if st := status.Convert(f.err); st.Code() == codes.NotFound {
		return "", fmt.Sprintf("%s's administrator defines %s (vwire apply), or ask for a service it has (vwire get services there)", cmpOr(f.name.Domain, f.o.Own), f.name.Service),
			errors.New(st.Message())
	}
	return fmt.Sprintf("network service %q is defined", f.name.Service), "", nil
}

func (f *find) policy() (string, string, error) {
	f.run()
	st := status.Convert(f.err)
	if reason, _ := reasonGiven(st); reason == ReasonPolicy {
		return "", fmt.Sprintf("the service's allowedSpiffeIDs must admit %s (or diagnose as a client it admits: --client-id)", f.client),
			errors.New(st.Message())
	}
	if f.err != nil {
		return "", "", f.err
	}
	return fmt.Sprintf("its policy admits %s", f.client), "", nil
}

func (f *find) endpoints() (string, string, error) {
	f.run()
	if len(f.eps) == 0 {
		return "", "register an endpoint of the service whose labels its match rules select for these, or connect with other --labels (vwire get endpoints --service ... --source-labels ...)",
			fmt.Errorf("no endpoint of %q matches labels %v", f.name.Service, ClientLabels(f.labels, f.o.Own))
	}
	var names []string
	for _, ep := range f.eps {
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
