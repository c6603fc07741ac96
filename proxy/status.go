package proxy

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/proxy/proxypb"
)

// Status implements proxypb.OperatorServer: the domain's etcd, its proxy
// replicas as DNS has them, its peers (each probed with a handshake), the
// gateways on its connections' paths and the connections by state.
func (o *Operator) Status(ctx context.Context, _ *proxypb.StatusRequest) (*proxypb.DomainStatus, error) {
	if err := o.admin(ctx, "ask the domain's status"); err != nil {
		return nil, err
	}
	out := &proxypb.DomainStatus{Domain: o.Own, TrustDomain: o.TD.Name(), Connections: map[string]uint32{}}
	var wg sync.WaitGroup
	wg.Go(func() { out.EtcdMembers, out.EtcdError = o.etcdMembers(ctx) })
	wg.Go(func() { out.Proxies, out.ProxiesError = o.replicas(ctx) })
	wg.Go(func() { out.Peers = o.peerHealth(ctx) })
	conns, _, err := o.Conns.List(ctx)
	if err != nil {
		wg.Wait()
		return nil, status.Errorf(codes.Unavailable, "listing the connections: %v", err)
	}
	loads := map[string]*proxypb.GatewayLoad{}
	for _, c := range conns {
		out.Connections[strings.ToLower(c.GetState().String())]++
		for _, seg := range c.GetPath().GetSegments() {
			node, ok := strings.CutPrefix(seg.GetName(), "gateway.")
			id, err := spiffeid.FromString(seg.GetSpiffeId())
			if !ok || err != nil || !id.MemberOf(o.TD) {
				continue // another domain's gateway
			}
			if loads[node] == nil {
				loads[node] = &proxypb.GatewayLoad{Node: node, SpiffeId: id.String()}
				out.Gateways = append(out.Gateways, loads[node])
			}
			loads[node].Vwires++
		}
	}
	if services, endpoints, ok := o.Store.Counts(); ok {
		out.Services, out.Endpoints = uint32(services), uint32(endpoints)
	}
	wg.Wait()
	return out, nil
}

// admin refuses anyone but the domain's admin, who may do.
func (o *Operator) admin(ctx context.Context, do string) error {
	return federation.RequireAdmin(ctx, o.TD, do)
}

// etcdMembers lists the cluster's members, and which answer (asked at
// the client's endpoints: a member's advertised URLs may be ones only its
// peers reach) and lead.
func (o *Operator) etcdMembers(ctx context.Context) ([]*proxypb.EtcdMember, string) {
	if o.Etcd == nil {
		return nil, "no etcd client"
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	list, err := o.Etcd.MemberList(ctx)
	if err != nil {
		return nil, err.Error()
	}
	answered, leader := map[uint64]bool{}, uint64(0)
	for _, ep := range o.Etcd.Endpoints() {
		ectx, cancel := context.WithTimeout(ctx, time.Second)
		st, err := o.Etcd.Status(ectx, ep)
		cancel()
		if err == nil {
			answered[st.Header.GetMemberId()], leader = true, st.Leader
		}
	}
	var out []*proxypb.EtcdMember
	for _, m := range list.Members {
		em := &proxypb.EtcdMember{Name: m.GetName(), ClientUrls: m.GetClientURLs(), Leader: m.GetID() == leader}
		if !answered[m.GetID()] {
			em.Error = "did not answer at this proxy's etcd endpoints " + strings.Join(o.Etcd.Endpoints(), ",")
		}
		out = append(out, em)
	}
	return out, ""
}

// replicas are the domain's own proxies as its SRV records resolve.
func (o *Operator) replicas(ctx context.Context) ([]*proxypb.ProxyReplica, string) {
	targets, err := o.Resolver.Lookup(ctx, o.Own)
	if err != nil {
		return nil, err.Error()
	}
	var out []*proxypb.ProxyReplica
	for _, t := range targets {
		out = append(out, &proxypb.ProxyReplica{Target: fmt.Sprintf("%s:%d", t.Host, t.Port), Addresses: t.Addresses(), Priority: uint32(t.Priority), Weight: uint32(t.Weight)})
	}
	return out, ""
}

// peerHealth is each peer's bundle, and whether its proxy answers a
// handshake now (all probed at once, 3 s at most).
func (o *Operator) peerHealth(ctx context.Context) []*proxypb.PeerHealth {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	peers := o.Peers.List()
	out := make([]*proxypb.PeerHealth, len(peers))
	var wg sync.WaitGroup
	for i, st := range peers {
		ph := &proxypb.PeerHealth{Domain: st.Domain, TrustDomain: st.TrustDomain.Name(), BundleSource: st.Source, Error: st.LastError}
		if !st.LastFetched.IsZero() {
			ph.BundleFetched = timestamppb.New(st.LastFetched)
		}
		if !st.Expires.IsZero() {
			ph.BundleExpires = timestamppb.New(st.Expires)
		}
		if !st.NextFetch.IsZero() {
			ph.NextRefresh = timestamppb.New(st.NextFetch)
		}
		out[i] = ph
		wg.Go(func() {
			if err := o.probe(ctx, ph.Domain); err != nil {
				ph.Error = err.Error()
			} else {
				ph.Reachable = true
			}
		})
	}
	wg.Wait()
	return out
}
