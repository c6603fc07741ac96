package sandbox

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/vwire/vwire/domain"
	"github.com/vwire/vwire/federation"
	"github.com/vwire/vwire/proxy/proxypb"
)

// One federated peer floods the edge; it is refused past its limits,
// counted, and another peer's requests go through meanwhile.
func TestPeerFloodIsBounded(t *testing.T) {
	s := NewWith(t, func(c *domain.Config) {
		if c.Name == "b.example" {
			c.PeerLimits.Concurrent, c.PeerLimits.Rate, c.PeerLimits.Burst = 4, 20, 20
		}
	}, "a.example", "b.example", "c.example")
	a, b, c := s.D("a.example"), s.D("b.example"), s.D("c.example")
	b.Apply(reference)
	const service = "secure-intranet-connectivity@b.example"

	ctx, stop := context.WithTimeout(context.Background(), 20*time.Second)
	defer stop()
	var sent, exhausted atomic.Int64
	var wg sync.WaitGroup
	for range 8 { // c: 8 callers, 250 calls each at most
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 250 && ctx.Err() == nil; i++ {
				sent.Add(1)
				if _, err := c.Find(service, nil); status.Code(err) == codes.ResourceExhausted {
					exhausted.Add(1)
				}
			}
		}()
	}
	// a, at a pace its own limits allow, while c floods.
	var aFailed []error
	for i := 0; i < 20 && ctx.Err() == nil; i++ {
		if _, err := a.Find(service, map[string]string{"app": "firewall"}); err != nil {
			aFailed = append(aFailed, err)
		}
		time.Sleep(60 * time.Millisecond) // a's pace, not a wait for a condition
	}
	wg.Wait()
	if len(aFailed) > 0 {
		t.Errorf("a's finds failed while c flooded b: %d of 20, first: %v", len(aFailed), aFailed[0])
	}
	refused := b.Limiter.Refused()
	if exhausted.Load() == 0 || refused["c.example rate"]+refused["c.example concurrency"] == 0 {
		t.Errorf("c sent %d finds: %d refused as ResourceExhausted; b counted %v", sent.Load(), exhausted.Load(), refused)
	}
	for k := range refused {
		if strings.HasPrefix(k, "a.example ") {
			t.Errorf("b refused a's calls: %v", refused)
		}
	}
}

// A peer domain holds at most --peer-max-connections live connections
// here: past it a new one is refused, and a closed one makes room.
func TestPeerConnectionsBounded(t *testing.T) {
	s := NewWith(t, func(c *domain.Config) {
		if c.Name == "b.example" {
			c.PeerLimits.Connections = 2
		}
	}, "a.example", "b.example")
	a, b := s.D("a.example"), s.D("b.example")
	b.Apply(reference)
	var conns []*proxypb.Connection
	request := func() (*proxypb.Connection, error) {
		return a.Request("secure-intranet-connectivity@b.example", "spiffe://a.example/ns/x", map[string]string{"app": "web"}, "")
	}
	for range 2 {
		c, err := request()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// b counts what its watch of the connections has seen: wait for it.
	var err error
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var c *proxypb.Connection
		if c, err = request(); err == nil {
			a.Close(c) // not counted yet
		}
		if status.Code(err) == codes.ResourceExhausted || time.Now().After(deadline) {
			break
		}
	}
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), `domain "a.example" holds 2 connections in "b.example" already, its most (--peer-max-connections)`) {
		t.Fatalf("a third connection: %v", err)
	}
	// A refresh of a held connection is not a new one.
	if _, err := a.Request("secure-intranet-connectivity@b.example", "spiffe://a.example/ns/x", map[string]string{"app": "web"}, conns[0].GetId()); err != nil {
		t.Errorf("refreshing a held connection: %v", err)
	}
	if err := a.Close(conns[0]); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err = request(); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Errorf("after a close, a new connection: %v", err)
	}
}

// A message larger than the bound is refused by its length, before it is
// read: a 4 MB label map from a peer proxy stores nothing.
func TestOversizedMessageRefused(t *testing.T) {
	s := New(t, "b.example", "c.example")
	b, c := s.D("b.example"), s.D("c.example")
	b.Apply(reference)
	p, _ := c.Peers.Lookup("b.example")
	conn, err := federation.DialPeer(b.Addr().String(), c.Identity, "c.example", p)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	labels := map[string]string{"big": strings.Repeat("x", 4_000_000)}
	_, err = proxypb.NewNetworkServiceClient(conn).Request(context.Background(), &proxypb.NetworkServiceRequest{
		Connection: &proxypb.Connection{Id: "c-oversized", NetworkService: "secure-intranet-connectivity@b.example", Labels: labels}})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "larger than max") {
		t.Errorf("a 4 MB request: %v", err)
	}
	if b.Knows("c-oversized") {
		t.Error("b stored the oversized request's connection")
	}
	many := map[string]string{}
	for i := range 65 {
		many[fmt.Sprintf("k%d", i)] = "v"
	}
	_, err = proxypb.NewNetworkServiceClient(conn).Request(context.Background(), &proxypb.NetworkServiceRequest{
		Connection: &proxypb.Connection{Id: "c-many-labels", NetworkService: "secure-intranet-connectivity@b.example", Labels: many}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "65 labels, at most 64") || b.Knows("c-many-labels") {
		t.Errorf("65 labels: %v", err)
	}
}

// A peer that pings faster than the server allows is sent away with
// GOAWAY ENHANCE_YOUR_CALM (too_many_pings), not answered forever.
func TestPingFloodSentAway(t *testing.T) {
	s := New(t, "b.example", "c.example")
	b, c := s.D("b.example"), s.D("c.example")
	cfg := tlsconfig.MTLSClientConfig(c.Identity, c.Identity, tlsconfig.AuthorizeID(federation.ProxyID(b.TD)))
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", b.Addr().String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(15 * time.Second))
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	goaway := make(chan *http2.GoAwayFrame, 1)
	go func() {
		defer close(goaway)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			if g, ok := f.(*http2.GoAwayFrame); ok {
				goaway <- g
				return
			}
		}
	}()
	var got *http2.GoAwayFrame
	for i := 0; i < 100 && got == nil; i++ { // at most 100 pings, 10 ms apart
		if err := fr.WritePing(false, [8]byte{byte(i)}); err != nil {
			break // the server closed the connection: its GOAWAY tells why
		}
		select {
		case got = <-goaway:
		case <-time.After(10 * time.Millisecond):
		}
	}
	if got == nil {
		select {
		case got = <-goaway:
		case <-time.After(5 * time.Second):
		}
	}
	if got == nil || got.ErrCode != http2.ErrCodeEnhanceYourCalm || string(got.DebugData()) != "too_many_pings" {
		t.Fatalf("after a ping flood: GOAWAY %v", got)
	}
}

// Fairness: a's cross-domain set-ups to b, alone and while c floods b with
// up to 10,000 requests from 8 callers (target: a's p99 under 50 ms).
// Every domain runs in this one process, so the flood's own cost on c's
// side weighs on a too: an upper bound of what a would see.
func BenchmarkFairness(b *testing.B) {
	for _, flood := range []bool{false, true} {
		name := "quiet"
		if flood {
			name = "flood"
		}
		b.Run(name, func(b *testing.B) {
			s := New(b, "a.example", "b.example", "c.example")
			s.D("b.example").Apply(reference)
			a, c := s.D("a.example"), s.D("c.example")
			const service = "secure-intranet-connectivity@b.example"
			ctx, stop := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			var sent, refused atomic.Int64
			if flood {
				for range 8 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for ctx.Err() == nil && sent.Add(1) <= 10_000 {
							conn, err := c.Request(service, "spiffe://c.example/ns/flood", nil, "")
							switch {
							case status.Code(err) == codes.ResourceExhausted:
								refused.Add(1)
							case err == nil:
								c.Close(conn)
							}
						}
					}()
				}
			}
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				start := time.Now()
				conn, err := a.Request(service, "spiffe://a.example/ns/x", map[string]string{"app": "web"}, "")
				lat = append(lat, time.Since(start))
				if err != nil {
					b.Fatal(err)
				}
				a.Close(conn)
			}
			b.StopTimer()
			stop()
			wg.Wait()
			report(b, lat)
			if flood {
				b.ReportMetric(float64(min(sent.Load(), 10_000)), "flood-requests")
				b.ReportMetric(float64(refused.Load()), "flood-refused")
			}
		})
	}
}
