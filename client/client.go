// Package client is a working network service client (NSC), as `vwire
// connect` runs it: it requests a vWire through its node's gateway, keeps
// it refreshed, probes the peer address through it, requests it again when
// the control plane lost it or the data path broke, and closes it when
// done.
package client

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/vwire/vwire/proxy/proxypb"
)

// Options say what to ask for.
type Options struct {
	Service   string
	Labels    map[string]string
	NetNS     string
	Interface string
	// AcceptRoutes are the route prefixes the workload takes from the
	// endpoint's side beyond its addresses (0.0.0.0/0: a default route).
	AcceptRoutes []string
	// ProbeInterval is how often the peer address is pinged; a vWire is
	// down after Misses probes in a row go unanswered.
	ProbeInterval time.Duration
	Misses        int
	// Report is told what happens: heals, re-requests, failures.
	Report func(Event)
	// Reconnected, if set, signals that the connection to the gateway came
	// back after it broke (Reconnects makes one): the gateway restarted,
	// and the vWire is requested again at once rather than after Misses
	// lost probes.
	Reconnected <-chan struct{}
}

// Reconnects signals on the returned channel each time conn is ready again
// after it was not, until ctx ends. It has an idle conn connect again, so
// that a gateway that restarts is noticed without waiting for a call.
func Reconnects(ctx context.Context, conn *grpc.ClientConn) <-chan struct{} {
	out := make(chan struct{}, 1)
	go func() {
		lost := false
		for s := conn.GetState(); ; s = conn.GetState() {
			switch s {
			case connectivity.Ready:
				if lost {
					select {
					case out <- struct{}{}:
					default:
					}
				}
				lost = false
			case connectivity.Idle:
				conn.Connect()
				lost = true
			case connectivity.Shutdown:
				return
			default:
				lost = true
			}
			if !conn.WaitForStateChange(ctx, s) {
				return
			}
		}
	}()
	return out
}

// Event is something the keeper noticed.
type Event struct {
	// "down", "healed", "requested" (new addresses), "refresh-failed",
	// "probe-failed" (no probe socket), "close-failed"
	Kind string
	Conn *proxypb.Connection
	Gap  time.Duration // for "healed": from the last good probe to the first good one again
	Err  error
}

// Request asks the gateway for a vWire (or, with id, for it again).
func Request(ctx context.Context, c proxypb.NetworkServiceClient, o Options, id string) (*proxypb.Connection, error) {
	req := &proxypb.NetworkServiceRequest{Connection: &proxypb.Connection{
		Id: id, NetworkService: o.Service, Labels: o.Labels,
		Mechanism: &proxypb.Mechanism{Type: &proxypb.Mechanism_Kernel{Kernel: &proxypb.KernelInterface{Netns: o.NetNS, InterfaceName: o.Interface, AcceptRoutes: o.AcceptRoutes}}},
	}}
	return c.Request(ctx, req)
}

// Peer is the address the client probes: the endpoint's first.
func Peer(conn *proxypb.Connection) (netip.Addr, error) {
	for _, s := range conn.GetIpContext().GetDstIpAddrs() {
		if p, err := netip.ParsePrefix(s); err == nil {
			return p.Addr(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("connection %s has no endpoint address to probe", conn.GetId())
}

// refreshIn is when to refresh conn: at a third of its shortest lifetime.
func refreshIn(conn *proxypb.Connection) time.Duration {
	wait := time.Minute
	for _, s := range conn.GetPath().GetSegments() {
		if s.GetExpires() != nil {
			wait = min(wait, time.Until(s.GetExpires().AsTime())/3)
		}
	}
	return max(wait, time.Second)
}

// Keep keeps conn up until ctx ends, then closes it. It returns the last
// connection it had.
func Keep(ctx context.Context, c proxypb.NetworkServiceClient, o Options, conn *proxypb.Connection) *proxypb.Connection {
	if o.ProbeInterval <= 0 {
		o.ProbeInterval = time.Second
	}
	if o.Misses <= 0 {
		o.Misses = 3
	}
	report := o.Report
	if report == nil {
		report = func(Event) {}
	}
	var prober *Prober
	var peer netip.Addr
	openProber := func() {
		prober.Close()
		prober = nil
		var err error
		if peer, err = Peer(conn); err == nil {
			prober, err = NewProber(o.NetNS, peer)
		}
		if err != nil {
			report(Event{Kind: "probe-failed", Conn: conn, Err: err})
		}
	}
	openProber()
	defer func() { prober.Close() }()

	refresh := time.NewTimer(refreshIn(conn))
	defer refresh.Stop()
	probe := time.NewTicker(o.ProbeInterval)
	defer probe.Stop()
	lastGood, misses, down := time.Now(), 0, false
	retry, nextTry := time.Second, time.Time{} // while down: re-request with backoff
	again := func() bool {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		got, err := Request(ctx, c, o, conn.GetId())
		if err != nil {
			report(Event{Kind: "refresh-failed", Conn: conn, Err: err})
			return false
		}
		changed := !proto.Equal(got.GetIpContext(), conn.GetIpContext())
		conn = got
		if changed {
			openProber()
			report(Event{Kind: "requested", Conn: conn})
		}
		return true
	}
	for {
		select {
		case <-ctx.Done():
			closeCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, err := c.Close(closeCtx, &proxypb.Connection{Id: conn.GetId()}); err != nil && status.Code(err) != codes.NotFound {
				report(Event{Kind: "close-failed", Conn: conn, Err: err})
			}
			return conn
		case <-refresh.C:
			again()
			refresh.Reset(refreshIn(conn))
		case <-o.Reconnected:
			// The gateway restarted: what it programmed may be gone.
			if again() {
				retry = time.Second
			}
		case <-probe.C:
			if prober == nil {
				openProber()
				continue
			}
			pctx, cancel := context.WithTimeout(ctx, min(o.ProbeInterval, time.Second))
			_, err := prober.Ping(pctx, peer)
			cancel()
			if err == nil {
				if misses > 0 { // even a short gap is worth a line: a hop restarted
					report(Event{Kind: "healed", Conn: conn, Gap: time.Since(lastGood)})
				}
				lastGood, misses, down, retry = time.Now(), 0, false, time.Second
				continue
			}
			if misses++; misses >= o.Misses {
				if !down {
					down = true
					report(Event{Kind: "down", Conn: conn, Err: err})
				}
				// The control plane may have lost it, or a hop restarted.
				if now := time.Now(); now.After(nextTry) {
					if again() {
						retry = time.Second
					} else {
						retry = min(2*retry, 10*time.Second)
					}
					nextTry = now.Add(retry)
				}
			}
		}
	}
}

// Tunnel names the tunnel a connection's answer carries.
func Tunnel(conn *proxypb.Connection) string {
	switch m := conn.GetMechanism(); {
	case m.GetWireguard() != nil && bytes.Equal(m.GetWireguard().GetSrcPublicKey(), m.GetWireguard().GetDstPublicKey()):
		how := "routed"
		if conn.GetPayload() == "ETHERNET" {
			how = "bridged"
		}
		return fmt.Sprintf("none, both ends behind the gateway at %s (%s)", m.GetWireguard().GetDstIp(), how)
	case m.GetWireguard() != nil:
		return fmt.Sprintf("wireguard to %s:%d", m.GetWireguard().GetDstIp(), m.GetWireguard().GetDstPort())
	case m.GetVxlan() != nil:
		return fmt.Sprintf("vxlan %d to %s", m.GetVxlan().GetVni(), m.GetVxlan().GetDstIp())
	}
	return "-"
}

// Describe is the connection as `vwire connect` prints it.
func Describe(conn *proxypb.Connection, o Options) string {
	var hops []string
	for _, s := range conn.GetPath().GetSegments() {
		hops = append(hops, s.GetName())
	}
	ns := o.NetNS
	if ns == "" {
		ns = "this network namespace"
	}
	return fmt.Sprintf("connection %s to %s: %s in %s, %s -> %s (endpoint %s)\ntunnel: %s, MTU %d\npath: %s\n",
		conn.GetId(), conn.GetNetworkService(), o.Interface, ns,
		strings.Join(conn.GetIpContext().GetSrcIpAddrs(), ","), strings.Join(conn.GetIpContext().GetDstIpAddrs(), ","),
		conn.GetNetworkServiceEndpointName(), Tunnel(conn), conn.GetMtu(), strings.Join(hops, " > "))
}
