package proxy

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	"google.golang.org/protobuf/proto"

	"github.com/vwire/vwire/proxy/proxypb"
)

// Dataplane programs one domain's end of a vWire: the endpoint's side in
// the endpoint's domain, the client's side in the client's. The gateway
// implements it (gateway.Gateway); a domain that has none refuses
// requests, and tests use FakeDataplane.
type Dataplane interface {
	// Apply programs (or, for a known id, keeps) side's end of conn and
	// returns conn with what it set: mechanism, addresses, MTU.
	Apply(ctx context.Context, side Side, conn *proxypb.Connection) (*proxypb.Connection, error)
	// Remove removes side's end of conn (as stored: its path says which
	// gateways have its ends); a missing one is fine.
	Remove(ctx context.Context, side Side, conn *proxypb.Connection) error
}

// Side is which end of a vWire a domain programs.
type Side string

// The two ends.
const (
	ClientSide   Side = "client"
	EndpointSide Side = "endpoint"
)

// FakeDataplane programs nothing and remembers everything; it renders its
// state as text for tests to compare.
type FakeDataplane struct {
	mu   sync.Mutex
	ends map[string]*proxypb.Connection // side/id
	Fail error                          // returned by Apply when set
	// Addresses, when set, is the IP context the endpoint's side answers.
	Addresses *proxypb.IPContext
	calls     int
}

// NewFakeDataplane returns an empty fake.
func NewFakeDataplane() *FakeDataplane {
	return &FakeDataplane{ends: map[string]*proxypb.Connection{}}
}

// Apply implements Dataplane.
func (f *FakeDataplane) Apply(_ context.Context, side Side, conn *proxypb.Connection) (*proxypb.Connection, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.Fail != nil {
		return nil, f.Fail
	}
	if side == EndpointSide && conn.GetMtu() == 0 {
		conn.Mtu = 1420
	}
	if side == EndpointSide && f.Addresses != nil {
		conn.IpContext = proto.Clone(f.Addresses).(*proxypb.IPContext)
	}
	f.ends[string(side)+"/"+conn.GetId()] = conn
	return conn, nil
}

// Remove implements Dataplane.
func (f *FakeDataplane) Remove(_ context.Context, side Side, conn *proxypb.Connection) error {
	id := conn.GetId()
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.ends, string(side)+"/"+id)
	return nil
}

// String lists the programmed ends, one line each, sorted.
func (f *FakeDataplane) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var lines []string
	for key, c := range f.ends {
		side, id, _ := strings.Cut(key, "/")
		lines = append(lines, fmt.Sprintf("%s %s %s -> %s", side, id, c.GetNetworkService(), c.GetNetworkServiceEndpointName()))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
