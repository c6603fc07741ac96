// Package endpoint is a working network service endpoint (NSE), as
// `vwire endpoint` runs it: it hands each connection a point-to-point pair
// of addresses from its prefix and names the interface its gateway makes
// in the endpoint's network namespace. Its gateway calls it on its unix
// socket.
package endpoint

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/big"
	"net/netip"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/vwire/vwire/proxy/proxypb"
)

// Endpoint serves the endpoint's side of its connections.
type Endpoint struct {
	proxypb.UnimplementedNetworkServiceServer
	NetNS   string
	Payload string // "IP" or "ETHERNET"

	prefix netip.Prefix
	pairs  int // how many pairs the prefix holds (the first is not used)

	mu    sync.Mutex
	byID  map[string]int // connection id → pair
	taken map[int]string
	last  int // the pair handed out last (0: none yet)
}

// New returns an endpoint handing out pairs from cidr in network namespace
// netns, for payload.
func New(cidr, netns, payload string) (*Endpoint, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return nil, fmt.Errorf("--cidr %q: %v (want a prefix such as 172.16.1.0/24)", cidr, err)
	}
	if p != p.Masked() {
		return nil, fmt.Errorf("--cidr %q has host bits set: did you mean %s?", cidr, p.Masked())
	}
	if payload != "IP" && payload != "ETHERNET" {
		return nil, fmt.Errorf("--payload %q: want IP or ETHERNET", payload)
	}
	hostBits := p.Addr().BitLen() - p.Bits()
	if hostBits < 2 {
		return nil, fmt.Errorf("--cidr %s is too small: it needs room for at least two address pairs (a /30 or larger)", cidr)
	}
	pairs := 1 << 30
	if hostBits-1 < 30 {
		pairs = 1 << (hostBits - 1)
	}
	return &Endpoint{NetNS: netns, Payload: payload, prefix: p, pairs: pairs, byID: map[string]int{}, taken: map[int]string{}}, nil
}

// pair is the client's and the endpoint's address of pair i.
func (e *Endpoint) pair(i int) (client, ep netip.Addr) {
	base := new(big.Int).SetBytes(e.prefix.Addr().AsSlice())
	base.Add(base, big.NewInt(int64(2*i)))
	b := base.FillBytes(make([]byte, e.prefix.Addr().BitLen()/8))
	client, _ = netip.AddrFromSlice(b)
	return client, client.Next()
}

// bits is the prefix length of a handed-out address: the host alone for
// IP (the gateway routes), the pair's subnet for an Ethernet link.
func (e *Endpoint) bits(a netip.Addr) int {
	if e.Payload == "ETHERNET" {
		return a.BitLen() - 1
	}
	return a.BitLen()
}

// Interface is the name of connection id's interface in the endpoint's
// namespace: one per connection, the same every time.
func Interface(id string) string {
	sum := sha256.Sum256([]byte(id))
	return "nsm" + hex.EncodeToString(sum[:5])
}

// Request implements proxypb.NetworkServiceServer: it assigns (or, on a
// refresh, keeps) connection's address pair.
func (e *Endpoint) Request(_ context.Context, req *proxypb.NetworkServiceRequest) (*proxypb.Connection, error) {
	conn := proto.Clone(req.GetConnection()).(*proxypb.Connection)
	if conn.GetId() == "" {
		return nil, status.Error(codes.InvalidArgument, "the request has no connection id")
	}
	if p := conn.GetPayload(); p != "" && p != e.Payload {
		return nil, status.Errorf(codes.FailedPrecondition, "this endpoint carries %s payload, the service asks for %s", e.Payload, p)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	i, ok := e.byID[conn.GetId()]
	if !ok {
		i = e.hinted(conn.GetIpContext())
	}
	if i == 0 {
		// The first free pair after the last handed out, not the lowest:
		// a pair just freed comes back only once the others are in use,
		// as its vWire's links may still be going (a gateway makes a new
		// end that wants its addresses wait for them).
		for k := range e.pairs - 1 { // pairs 1 to pairs-1, from last+1 round
			j := (e.last+k)%(e.pairs-1) + 1
			if _, used := e.taken[j]; !used {
				i, e.last = j, j
				break
			}
		}
	}
	if i == 0 {
		return nil, status.Errorf(codes.ResourceExhausted, "--cidr %s is exhausted: all %d address pairs are in use", e.prefix, e.pairs-1)
	}
	e.byID[conn.GetId()], e.taken[i] = i, conn.GetId()
	client, ep := e.pair(i)
	conn.IpContext = &proxypb.IPContext{
		SrcIpAddrs: []string{netip.PrefixFrom(client, e.bits(client)).String()},
		DstIpAddrs: []string{netip.PrefixFrom(ep, e.bits(ep)).String()},
	}
	conn.Mechanism = &proxypb.Mechanism{Type: &proxypb.Mechanism_Kernel{Kernel: &proxypb.KernelInterface{Netns: e.NetNS, InterfaceName: Interface(conn.GetId())}}}
	return conn, nil
}

// hinted is the free pair a refresh names (after the endpoint restarted),
// or 0.
func (e *Endpoint) hinted(ipc *proxypb.IPContext) int {
	if len(ipc.GetSrcIpAddrs()) == 0 {
		return 0
	}
	p, err := netip.ParsePrefix(ipc.GetSrcIpAddrs()[0])
	if err != nil || !e.prefix.Contains(p.Addr()) {
		return 0
	}
	off := new(big.Int).Sub(new(big.Int).SetBytes(p.Addr().AsSlice()), new(big.Int).SetBytes(e.prefix.Addr().AsSlice()))
	if off.Bit(0) != 0 || !off.IsInt64() {
		return 0
	}
	i := int(off.Int64() / 2)
	if _, used := e.taken[i]; used || i == 0 || i >= e.pairs {
		return 0
	}
	return i
}

// Close implements proxypb.NetworkServiceServer: the pair is free again.
func (e *Endpoint) Close(_ context.Context, conn *proxypb.Connection) (*proxypb.CloseResponse, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if i, ok := e.byID[conn.GetId()]; ok {
		delete(e.byID, conn.GetId())
		delete(e.taken, i)
	}
	return &proxypb.CloseResponse{}, nil
}

// InUse is how many connections hold a pair.
func (e *Endpoint) InUse() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.byID)
}
