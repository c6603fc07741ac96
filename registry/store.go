package registry

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/vwire/vwire/registry/registrypb"
)

// Errors the store returns; the server maps them to gRPC codes.
var (
	ErrNotFound   = errors.New("not found")
	ErrPermission = errors.New("permission denied")
	// ErrPolicy: a service's policy does not admit the client.
	ErrPolicy   = fmt.Errorf("%w by the service's policy", ErrPermission)
	ErrConflict = errors.New("conflicting concurrent writes")
)

// Store keeps one domain's services and endpoints in etcd, under
// /vwire/<domain>/:
//
//	services/<name>            a NetworkService
//	endpoints/<name>           an Endpoint, on its lease if it expires
//	index/<service>/<name>     a copy of the Endpoint per service it provides,
//	                           on the same lease, so that a find is one range read
type Store struct {
	cli    *clientv3.Client
	prefix string
	now    func() time.Time
	// implicit are the labels every endpoint of the domain has for
	// selection (LabelDomain, LabelCluster).
	implicit map[string]string

	mirror  atomic.Pointer[mirror]
	lapsed  atomic.Int64 // registrations whose lease lapsed, as the mirror saw them
	written lastWrite
}

// NewStore returns a Store for domain on cli.
func NewStore(cli *clientv3.Client, domain string) *Store {
	return &Store{cli: cli, prefix: "/vwire/" + domain + "/", now: time.Now,
		implicit: map[string]string{LabelDomain: domain, LabelCluster: domain}}
}

func (s *Store) serviceKey(name string) string  { return s.prefix + "services/" + name }
func (s *Store) endpointKey(name string) string { return s.prefix + "endpoints/" + name }
func (s *Store) indexPrefix(svc string) string  { return s.prefix + "index/" + svc + "/" }

// PutService stores (creates or replaces) a network service.
func (s *Store) PutService(ctx context.Context, svc *registrypb.NetworkService) error {
	if err := ValidateService(svc); err != nil {
		return err
	}
	resp, err := s.cli.Put(ctx, s.serviceKey(svc.GetName()), marshal(svc))
	if err == nil {
		s.written.saw(resp.Header.Revision)
	}
	return err
}

// GetService returns the named network service.
func (s *Store) GetService(ctx context.Context, name string) (*registrypb.NetworkService, error) {
	if svc, _, ok, err := s.cached(ctx, name, false); ok {
		return svc, err
	}
	resp, err := s.cli.Get(ctx, s.serviceKey(name))
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, errorf(ErrNotFound, "network service %q is not registered", name)
	}
	return unmarshal[registrypb.NetworkService](resp.Kvs[0].Value)
}

// ListServices returns every network service, by name.
func (s *Store) ListServices(ctx context.Context) ([]*registrypb.NetworkService, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"services/", clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	return unmarshalAll[registrypb.NetworkService](resp.Kvs)
}

// DeleteService removes a network service. Its endpoints stay registered.
func (s *Store) DeleteService(ctx context.Context, name string) error {
	resp, err := s.cli.Delete(ctx, s.serviceKey(name))
	if err != nil {
		return err
	}
	s.written.saw(resp.Header.Revision)
	if resp.Deleted == 0 {
		return errorf(ErrNotFound, "network service %q is not registered", name)
	}
	return nil
}

// RegisterEndpoint registers ep for owner. A lifetime of 0 makes it static;
// otherwise it expires after lifetime unless refreshed. Only the SPIFFE ID
// that first registered a name may register it again.
func (s *Store) RegisterEndpoint(ctx context.Context, owner string, ep *registrypb.Endpoint, lifetime time.Duration) (*registrypb.Endpoint, error) {
	resp, err := s.Apply(ctx, owner, &registrypb.ApplyRequest{Endpoints: []*registrypb.ApplyEndpoint{{Endpoint: ep}}}, map[string]time.Duration{ep.GetName(): lifetime})
	if err != nil {
		return nil, err
	}
	return resp.Endpoints[0], nil
}

// existing is an endpoint as stored, with what a write must check.
type existing struct {
	ep    *registrypb.Endpoint
	rev   int64 // ModRevision; 0 when absent
	lease clientv3.LeaseID
}

func (s *Store) getEndpoint(ctx context.Context, name string) (existing, error) {
	resp, err := s.cli.Get(ctx, s.endpointKey(name))
	if err != nil {
		return existing{}, err
	}
	if len(resp.Kvs) == 0 {
		return existing{}, nil
	}
	ep, err := unmarshal[registrypb.Endpoint](resp.Kvs[0].Value)
	if err != nil {
		return existing{}, err
	}
	return existing{ep: ep, rev: resp.Kvs[0].ModRevision, lease: clientv3.LeaseID(resp.Kvs[0].Lease)}, nil
}

func checkOwner(old existing, owner, name string) error {
	if old.ep != nil && old.ep.GetOwner() != owner {
		return errorf(ErrPermission, "endpoint %q belongs to %s, not %s", name, old.ep.GetOwner(), owner)
	}
	return nil
}

// Apply stores services and endpoints in one etcd transaction: all of them
// or, on any error, none. Endpoints get owner and, where lifetimes (by name)
// or their ExpiresIn say so, a lease; the others are static.
func (s *Store) Apply(ctx context.Context, owner string, req *registrypb.ApplyRequest, lifetimes map[string]time.Duration) (*registrypb.ApplyResponse, error) {
	for _, svc := range req.GetServices() {
		if err := ValidateService(svc); err != nil {
			return nil, err
		}
	}
	lifetimes = maps.Clone(lifetimes)
	if lifetimes == nil {
		lifetimes = map[string]time.Duration{}
	}
	names := map[string]bool{}
	for _, ae := range req.GetEndpoints() {
		if err := ValidateEndpoint(ae.GetEndpoint()); err != nil {
			return nil, err
		}
		if names[ae.GetEndpoint().GetName()] {
			return nil, errorf(ErrInvalid, "endpoint %q appears twice", ae.GetEndpoint().GetName())
		}
		names[ae.GetEndpoint().GetName()] = true
		if d := ae.GetExpiresIn().AsDuration(); d > 0 {
			lifetimes[ae.GetEndpoint().GetName()] = d
		}
	}
	// Optimistic concurrency: read, check owners, write if nothing changed.
	for attempt := 0; attempt < 5; attempt++ {
		resp, retry, err := s.tryApply(ctx, owner, req, lifetimes)
		if !retry {
			return resp, err
		}
	}
	return nil, errorf(ErrConflict, "gave up after 5 attempts; try again")
}

func (s *Store) tryApply(ctx context.Context, owner string, req *registrypb.ApplyRequest, lifetimes map[string]time.Duration) (_ *registrypb.ApplyResponse, retry bool, _ error) {
	var (
		cmps    []clientv3.Cmp
		ops     []clientv3.Op
		granted []clientv3.LeaseID
		old     []existing
		out     = &registrypb.ApplyResponse{}
	)
	revoke := func(ids []clientv3.LeaseID) {
		for _, id := range ids {
			if id != clientv3.NoLease {
				_, _ = s.cli.Revoke(context.WithoutCancel(ctx), id) // an orphan lease expires by itself
			}
		}
	}
	for _, svc := range req.GetServices() {
		ops = append(ops, clientv3.OpPut(s.serviceKey(svc.GetName()), marshal(svc)))
		out.Services = append(out.Services, svc)
	}
	for _, ae := range req.GetEndpoints() {
		ep := proto.Clone(ae.GetEndpoint()).(*registrypb.Endpoint)
		prev, err := s.getEndpoint(ctx, ep.GetName())
		if err == nil {
			err = checkOwner(prev, owner, ep.GetName())
		}
		if err != nil {
			revoke(granted)
			return nil, false, err
		}
		ep.Owner = owner
		ep.ExpiresAt = nil
		lease := clientv3.NoLease
		if d := lifetimes[ep.GetName()]; d > 0 {
			g, err := s.cli.Grant(ctx, leaseSeconds(d))
			if err != nil {
				revoke(granted)
				return nil, false, err
			}
			lease = g.ID
			granted = append(granted, lease)
			ep.ExpiresAt = timestamppb.New(s.now().Add(time.Duration(g.TTL) * time.Second))
		}
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(s.endpointKey(ep.GetName())), "=", prev.rev))
		ops = append(ops, s.endpointOps(ep, prev.ep, lease)...)
		old = append(old, prev)
		out.Endpoints = append(out.Endpoints, ep)
	}
	resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
	if err != nil || !resp.Succeeded {
		revoke(granted)
		return nil, err == nil, err
	}
	s.written.saw(resp.Header.Revision)
	var replaced []clientv3.LeaseID
	for _, prev := range old {
		replaced = append(replaced, prev.lease)
	}
	revoke(replaced) // the keys moved to their new leases
	return out, false, nil
}

// endpointOps writes ep and its index entries on lease, and removes the
// index entries of services that prev provided and ep no longer does.
func (s *Store) endpointOps(ep, prev *registrypb.Endpoint, lease clientv3.LeaseID) []clientv3.Op {
	val := marshal(ep)
	opts := []clientv3.OpOption{}
	if lease != clientv3.NoLease {
		opts = append(opts, clientv3.WithLease(lease))
	}
	ops := []clientv3.Op{clientv3.OpPut(s.endpointKey(ep.GetName()), val, opts...)}
	for _, svc := range ep.GetNetworkServiceNames() {
		ops = append(ops, clientv3.OpPut(s.indexPrefix(svc)+ep.GetName(), val, opts...))
	}
	for _, svc := range prev.GetNetworkServiceNames() {
		if !slices.Contains(ep.GetNetworkServiceNames(), svc) {
			ops = append(ops, clientv3.OpDelete(s.indexPrefix(svc)+ep.GetName()))
		}
	}
	return ops
}

// RefreshEndpoint extends an expiring endpoint's registration by its
// lifetime. Only its owner may refresh it. Refreshing a static endpoint
// changes nothing.
func (s *Store) RefreshEndpoint(ctx context.Context, owner, name string) (*registrypb.Endpoint, error) {
	for attempt := 0; attempt < 5; attempt++ {
		prev, err := s.getEndpoint(ctx, name)
		if err != nil {
			return nil, err
		}
		if prev.ep == nil {
			return nil, errorf(ErrNotFound, "endpoint %q is not registered (or expired): register it again", name)
		}
		if err := checkOwner(prev, owner, name); err != nil {
			return nil, err
		}
		if prev.lease == clientv3.NoLease {
			return prev.ep, nil
		}
		ka, err := s.cli.KeepAliveOnce(ctx, prev.lease)
		if err != nil {
			return nil, errorf(ErrNotFound, "endpoint %q expired while refreshing (%v): register it again", name, err)
		}
		ep := proto.Clone(prev.ep).(*registrypb.Endpoint)
		ep.ExpiresAt = timestamppb.New(s.now().Add(time.Duration(ka.TTL) * time.Second))
		resp, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(s.endpointKey(name)), "=", prev.rev)).
			Then(s.endpointOps(ep, prev.ep, prev.lease)...).Commit()
		if err != nil {
			return nil, err
		}
		if resp.Succeeded {
			s.written.saw(resp.Header.Revision)
			return ep, nil
		}
	}
	return nil, errorf(ErrConflict, "endpoint %q changed during every refresh attempt", name)
}

// UnregisterEndpoint removes an endpoint. Only its owner may.
func (s *Store) UnregisterEndpoint(ctx context.Context, owner, name string) error {
	for attempt := 0; attempt < 5; attempt++ {
		prev, err := s.getEndpoint(ctx, name)
		if err != nil {
			return err
		}
		if prev.ep == nil {
			return errorf(ErrNotFound, "endpoint %q is not registered", name)
		}
		if err := checkOwner(prev, owner, name); err != nil {
			return err
		}
		ops := []clientv3.Op{clientv3.OpDelete(s.endpointKey(name))}
		for _, svc := range prev.ep.GetNetworkServiceNames() {
			ops = append(ops, clientv3.OpDelete(s.indexPrefix(svc)+name))
		}
		resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(s.endpointKey(name)), "=", prev.rev)).Then(ops...).Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded {
			s.written.saw(resp.Header.Revision)
			if prev.lease != clientv3.NoLease {
				_, _ = s.cli.Revoke(ctx, prev.lease) // nothing is left on it; it would expire anyway
			}
			return nil
		}
	}
	return errorf(ErrConflict, "endpoint %q changed during every attempt to remove it", name)
}

// GetEndpoint returns the named endpoint.
func (s *Store) GetEndpoint(ctx context.Context, name string) (*registrypb.Endpoint, error) {
	e, err := s.getEndpoint(ctx, name)
	if err != nil {
		return nil, err
	}
	if e.ep == nil {
		return nil, errorf(ErrNotFound, "endpoint %q is not registered", name)
	}
	return e.ep, nil
}

// ListEndpoints returns the endpoints of service (all if empty), by name.
func (s *Store) ListEndpoints(ctx context.Context, service string) ([]*registrypb.Endpoint, error) {
	key := s.prefix + "endpoints/"
	if service != "" {
		key = s.indexPrefix(service)
	}
	resp, err := s.cli.Get(ctx, key, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	return unmarshalAll[registrypb.Endpoint](resp.Kvs)
}

// FollowEndpoints keeps a copy of the domain's endpoints elsewhere (their
// Kubernetes objects): it calls all with every endpoint, then changed with
// each one registered, refreshed (nil deleted) or gone (the name, deleted
// true), until ctx ends or the watch fails (then call it again: all starts
// the copy over).
func (s *Store) FollowEndpoints(ctx context.Context, all func([]*registrypb.Endpoint), changed func(name string, ep *registrypb.Endpoint)) error {
	prefix := s.prefix + "endpoints/"
	resp, err := s.cli.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		return err
	}
	eps, err := unmarshalAll[registrypb.Endpoint](resp.Kvs)
	if err != nil {
		return err
	}
	all(eps)
	for wr := range s.cli.Watch(clientv3.WithRequireLeader(ctx), prefix, clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1)) {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			name := strings.TrimPrefix(string(ev.Kv.Key), prefix)
			if ev.Type == clientv3.EventTypeDelete {
				changed(name, nil)
				continue
			}
			var ep registrypb.Endpoint
			if err := proto.Unmarshal(ev.Kv.Value, &ep); err != nil {
				return fmt.Errorf("endpoint %s: %w", name, err)
			}
			changed(name, &ep)
		}
	}
	return ctx.Err()
}

// Find returns the endpoints that service's match rules select for a client
// with the given labels (see Select).
func (s *Store) Find(ctx context.Context, service string, labels map[string]string) ([]*registrypb.Endpoint, error) {
	if svc, eps, ok, err := s.cached(ctx, service, true); ok {
		if err != nil {
			return nil, err
		}
		return Select(svc, labels, eps, s.implicit), nil
	}
	svc, eps, _, err := s.snapshot(ctx, service)
	if err != nil {
		return nil, err
	}
	return Select(svc, labels, slices.Collect(maps.Values(eps)), s.implicit), nil
}

// Selections is service, its endpoints' names and what each of its
// match rules' routes selects now.
func (s *Store) Selections(ctx context.Context, service string) (*registrypb.NetworkService, []string, []MatchSelection, error) {
	svc, eps, ok, err := s.cached(ctx, service, true)
	if !ok {
		var all map[string]*registrypb.Endpoint
		svc, all, _, err = s.snapshot(ctx, service)
		eps = slices.Collect(maps.Values(all))
	}
	if err != nil {
		return nil, nil, nil, err
	}
	var names []string
	for _, ep := range eps {
		names = append(names, ep.GetName())
	}
	slices.Sort(names)
	return svc, names, Selections(svc, eps, s.implicit), nil
}

// cached reads service, and with endpoints its endpoints, from the mirror
// once it reflects this store's own writes; ok is false when etcd must be
// read instead (no mirror, or it lags more than 100 ms).
func (s *Store) cached(ctx context.Context, service string, endpoints bool) (*registrypb.NetworkService, []*registrypb.Endpoint, bool, error) {
	m := s.mirror.Load()
	if m == nil {
		return nil, nil, false, nil
	}
	svc, eps, ok := m.snapshot(ctx, service, endpoints, s.written.Load(), 100*time.Millisecond)
	if ok && svc == nil {
		return nil, nil, true, errorf(ErrNotFound, "network service %q is not registered", service)
	}
	return svc, eps, ok, nil
}

// snapshot reads a service and its endpoints at one revision.
func (s *Store) snapshot(ctx context.Context, service string) (*registrypb.NetworkService, map[string]*registrypb.Endpoint, int64, error) {
	// Serializable: served by the member asked, without a consensus round.
	// A find may lag a write by the member's replication delay, as a watch
	// would; writes check ownership with linearizable reads.
	resp, err := s.cli.Txn(ctx).Then(
		clientv3.OpGet(s.serviceKey(service), clientv3.WithSerializable()),
		clientv3.OpGet(s.indexPrefix(service), clientv3.WithPrefix(), clientv3.WithSerializable()),
	).Commit()
	if err != nil {
		return nil, nil, 0, err
	}
	svcKvs := resp.Responses[0].GetResponseRange().Kvs
	if len(svcKvs) == 0 {
		return nil, nil, 0, errorf(ErrNotFound, "network service %q is not registered", service)
	}
	svc, err := unmarshal[registrypb.NetworkService](svcKvs[0].Value)
	if err != nil {
		return nil, nil, 0, err
	}
	eps := map[string]*registrypb.Endpoint{}
	for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
		ep, err := unmarshal[registrypb.Endpoint](kv.Value)
		if err != nil {
			return nil, nil, 0, err
		}
		eps[ep.GetName()] = ep
	}
	return svc, eps, resp.Header.Revision, nil
}

// Watch sends the selection Find would return, then every change to it (an
// endpoint registered, refreshed, expired or unregistered, or the service's
// rules changed) until ctx ends. It reads etcd watches; it never polls.
func (s *Store) Watch(ctx context.Context, service string, labels map[string]string, send func(*registrypb.FindResponse) error) error {
	svc, eps, rev, err := s.snapshot(ctx, service)
	if err != nil {
		return err
	}
	selected := Select(svc, labels, slices.Collect(maps.Values(eps)), s.implicit)
	if err := send(&registrypb.FindResponse{Event: &registrypb.FindResponse_Snapshot{Snapshot: &registrypb.ListEndpointsResponse{Endpoints: selected}}}); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	epWatch := s.cli.Watch(ctx, s.indexPrefix(service), clientv3.WithPrefix(), clientv3.WithRev(rev+1))
	svcWatch := s.cli.Watch(ctx, s.serviceKey(service), clientv3.WithRev(rev+1))
	for {
		var wr clientv3.WatchResponse
		var ok bool
		select {
		case wr, ok = <-epWatch:
		case wr, ok = <-svcWatch:
		}
		if !ok || wr.Err() != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("watching network service %q: %w (find again)", service, errors.Join(wr.Err(), errors.New("watch closed")))
		}
		for _, ev := range wr.Events {
			key := string(ev.Kv.Key)
			switch {
			case key == s.serviceKey(service) && ev.Type == clientv3.EventTypeDelete:
				svc = nil
			case key == s.serviceKey(service):
				if svc, err = unmarshal[registrypb.NetworkService](ev.Kv.Value); err != nil {
					return err
				}
			case ev.Type == clientv3.EventTypeDelete:
				delete(eps, strings.TrimPrefix(key, s.indexPrefix(service)))
			default:
				ep, err := unmarshal[registrypb.Endpoint](ev.Kv.Value)
				if err != nil {
					return err
				}
				eps[ep.GetName()] = ep
			}
		}
		var next []*registrypb.Endpoint
		if svc != nil {
			next = Select(svc, labels, slices.Collect(maps.Values(eps)), s.implicit)
		}
		if err := sendDiff(selected, next, send); err != nil {
			return err
		}
		selected = next
	}
}

// sendDiff sends a delete for each endpoint that left the selection and an
// update for each that joined it or changed.
func sendDiff(before, after []*registrypb.Endpoint, send func(*registrypb.FindResponse) error) error {
	now := map[string]*registrypb.Endpoint{}
	for _, ep := range after {
		now[ep.GetName()] = ep
	}
	was := map[string]*registrypb.Endpoint{}
	for _, ep := range before {
		was[ep.GetName()] = ep
		if now[ep.GetName()] == nil {
			if err := send(&registrypb.FindResponse{Event: &registrypb.FindResponse_Delete{Delete: ep}}); err != nil {
				return err
			}
		}
	}
	for _, ep := range after {
		if old := was[ep.GetName()]; old == nil || !proto.Equal(old, ep) {
			if err := send(&registrypb.FindResponse{Event: &registrypb.FindResponse_Update{Update: ep}}); err != nil {
				return err
			}
		}
	}
	return nil
}

// leaseSeconds rounds a lifetime up to etcd's whole seconds.
func leaseSeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}

func marshal(m proto.Message) string {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err) // only for messages that cannot be encoded, which ours are not
	}
	return string(b)
}

func unmarshal[T any, P interface {
	*T
	proto.Message
}](b []byte) (P, error) {
	m := P(new(T))
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("corrupt record in etcd: %w", err)
	}
	return m, nil
}

func unmarshalAll[T any, P interface {
	*T
	proto.Message
}](kvs []*mvccpb.KeyValue) ([]P, error) {
	out := make([]P, 0, len(kvs))
	for _, kv := range kvs {
		m, err := unmarshal[T, P](kv.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}
