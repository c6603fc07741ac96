package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/vwire/vwire/gateway/kernel"
	"github.com/vwire/vwire/proxy/proxypb"
)

// Prober sends ICMP echo requests from inside a network namespace: the
// client's own view of its vWire.
type Prober struct {
	conn *icmp.PacketConn
	v6   bool
	id   int
	seq  atomic.Uint32
}

// NewProber opens a raw ICMP socket in network namespace ns (a name or a
// path) for probing addresses of family like to.
func NewProber(ns string, to netip.Addr) (*Prober, error) {
	p := &Prober{v6: to.Is6(), id: os.Getpid() & 0xffff}
	network, addr := "ip4:icmp", "0.0.0.0"
	if p.v6 {
		network, addr = "ip6:ipv6-icmp", "::"
	}
	err := kernel.Do(ns, func() (err error) {
		p.conn, err = icmp.ListenPacket(network, addr)
		if err != nil {
			return fmt.Errorf("ICMP socket in %q: %w", ns, err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Ping sends one echo request to addr and waits for its reply until ctx
// ends; it returns the round-trip time.
func (p *Prober) Ping(ctx context.Context, addr netip.Addr) (time.Duration, error) {
	seq := int(p.seq.Add(1) & 0xffff)
	var typ icmp.Type = ipv4.ICMPTypeEcho
	proto := 1
	if p.v6 {
		typ, proto = ipv6.ICMPTypeEchoRequest, 58
	}
	msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: p.id, Seq: seq, Data: []byte("vwire-probe")}}
	b, err := msg.Marshal(nil)
	if err != nil {
		return 0, err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(time.Second)
	}
	p.conn.SetReadDeadline(deadline)
	start := time.Now()
	if _, err := p.conn.WriteTo(b, &net.IPAddr{IP: net.IP(addr.AsSlice())}); err != nil {
		return 0, err
	}
	buf := make([]byte, 1500)
	for {
		n, from, err := p.conn.ReadFrom(buf)
		if err != nil {
			return 0, fmt.Errorf("no reply from %s: %w", addr, err)
		}
		reply, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			continue
		}
		echo, ok := reply.Body.(*icmp.Echo)
		if !ok || echo.ID != p.id || echo.Seq != seq || reply.Type == typ {
			continue
		}
		if ip, ok := from.(*net.IPAddr); !ok || !ip.IP.Equal(net.IP(addr.AsSlice())) {
			continue
		}
		return time.Since(start), nil
	}
}

// AwaitPeer pings conn's endpoint address from network namespace ns (a
// name or path; "" this process's own) every 20 ms until it answers or ctx
// ends: a vWire that is up, seen from the client's side.
func AwaitPeer(ctx context.Context, ns string, conn *proxypb.Connection) error {
	peer, err := Peer(conn)
	if err != nil {
		return err
	}
	p, err := NewProber(ns, peer)
	if err != nil {
		return err
	}
	defer p.Close()
	for ctx.Err() == nil {
		pctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		_, err = p.Ping(pctx, peer)
		cancel()
		if err == nil {
			return nil
		}
	}
	return fmt.Errorf("%s never answered: %w", peer, err)
}

// Close closes the socket.
func (p *Prober) Close() error {
	if p == nil || p.conn == nil {
		return errors.New("no probe socket")
	}
	return p.conn.Close()
}
