package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vwire/vwire/e2e"
)

func newZone(t *testing.T, rrs ...string) *e2e.Zone { return e2e.NewZone(t, rrs...) }

func hosts(ts []Target) string {
	var s []string
	for _, t := range ts {
		s = append(s, t.Host)
	}
	return strings.Join(s, ",")
}

func TestLookupPriorityAndTargets(t *testing.T) {
	z := newZone(t,
		"_vwire._tcp.b.example. 30 IN SRV 20 100 7002 p2.b.example.",
		"_vwire._tcp.b.example. 30 IN SRV 10 100 7001 p1.b.example.",
		"p1.b.example. 30 IN A 127.0.0.11",
		"p2.b.example. 30 IN A 127.0.0.12",
		"p2.b.example. 30 IN AAAA ::1",
	)
	r := NewResolver(z.Addr)
	ts, err := r.Lookup(context.Background(), "b.example")
	if err != nil {
		t.Fatal(err)
	}
	if hosts(ts) != "p1.b.example,p2.b.example" {
		t.Fatalf("order %s: want the lower priority first", hosts(ts))
	}
	if a := ts[0].Addresses(); len(a) != 1 || a[0] != "127.0.0.11:7001" {
		t.Errorf("p1 addresses %v", a)
	}
	if a := ts[1].Addresses(); len(a) != 2 || a[1] != "[::1]:7002" {
		t.Errorf("p2 addresses %v (want the target's A and AAAA, not the owner's)", a)
	}
}

func TestLookupWeights(t *testing.T) {
	z := newZone(t,
		"_vwire._tcp.b.example. 30 IN SRV 10 90 7001 heavy.b.example.",
		"_vwire._tcp.b.example. 30 IN SRV 10 10 7001 light.b.example.",
		"heavy.b.example. 30 IN A 127.0.0.11",
		"light.b.example. 30 IN A 127.0.0.12",
	)
	r := NewResolver(z.Addr)
	first := map[string]int{}
	for i := 0; i < 2000; i++ {
		ts, err := r.Lookup(context.Background(), "b.example")
		if err != nil {
			t.Fatal(err)
		}
		first[ts[0].Host]++
	}
	if share := float64(first["heavy.b.example"]) / 2000; share < 0.85 || share > 0.95 {
		t.Errorf("weight 90 of 100 came first %.0f%% of the time", share*100)
	}
}

func TestLookupCachesByTTL(t *testing.T) {
	z := newZone(t,
		"_vwire._tcp.b.example. 30 IN SRV 10 100 7001 p1.b.example.",
		"p1.b.example. 60 IN A 127.0.0.11",
	)
	r := NewResolver(z.Addr)
	now := time.Now()
	r.now = func() time.Time { return now }
	for i := 0; i < 5; i++ {
		if _, err := r.Lookup(context.Background(), "b.example"); err != nil {
			t.Fatal(err)
		}
	}
	if n := z.Asked("", "_vwire._tcp.b.example./SRV"); n != 1 {
		t.Errorf("asked %d times within the TTL, want 1", n)
	}
	now = now.Add(31 * time.Second)
	r.Lookup(context.Background(), "b.example")
	if n, a := z.Asked("", "_vwire._tcp.b.example./SRV"), z.Asked("", "p1.b.example./A"); n != 2 || a != 1 {
		t.Errorf("after the SRV TTL: SRV asked %d times (want 2), A %d (want 1: its TTL is longer)", n, a)
	}
}

func TestLookupUnknownDomainIsCachedBriefly(t *testing.T) {
	z := newZone(t)
	r := NewResolver(z.Addr)
	now := time.Now()
	r.now = func() time.Time { return now }
	for i := 0; i < 3; i++ {
		_, err := r.Lookup(context.Background(), "nowhere.example")
		if !errors.Is(err, ErrUnknownDomain) || !strings.Contains(err.Error(), "no _vwire._tcp.nowhere.example SRV record") {
			t.Fatalf("unknown domain: %v", err)
		}
	}
	if n := z.Asked("", "_vwire._tcp.nowhere.example./SRV"); n != 1 {
		t.Errorf("negative answer asked %d times, want 1", n)
	}
	now = now.Add(6 * time.Second)
	r.Lookup(context.Background(), "nowhere.example")
	if n := z.Asked("", "_vwire._tcp.nowhere.example./SRV"); n != 2 {
		t.Errorf("negative answer not asked again after NegativeTTL")
	}
}

func TestLookupTruncatedRetriesOverTCP(t *testing.T) {
	z := newZone(t,
		"_vwire._tcp.b.example. 30 IN SRV 10 100 7001 p1.b.example.",
		"p1.b.example. 30 IN A 127.0.0.11",
	)
	z.Truncate("_vwire._tcp.b.example.")
	ts, err := NewResolver(z.Addr).Lookup(context.Background(), "b.example")
	if err != nil || len(ts) != 1 {
		t.Fatalf("%v, %v", ts, err)
	}
	if z.Asked("tcp", "_vwire._tcp.b.example./SRV") != 1 {
		t.Error("the truncated answer was not asked again over TCP")
	}
}

func TestLookupUsesGlue(t *testing.T) {
	z := newZone(t,
		"_vwire._tcp.b.example. 30 IN SRV 10 100 7001 p1.b.example.",
		"p1.b.example. 30 IN A 127.0.0.11",
	)
	z.Glue()
	ts, err := NewResolver(z.Addr).Lookup(context.Background(), "b.example")
	if err != nil || ts[0].Addresses()[0] != "127.0.0.11:7001" {
		t.Fatalf("%v, %v", ts, err)
	}
	if n := z.Asked("", "p1.b.example./A"); n != 0 {
		t.Errorf("asked for the A record %d times although the answer carried it", n)
	}
}

func TestLookupDNSDown(t *testing.T) {
	l, _ := net.ListenPacket("udp", "127.0.0.1:0")
	addr := l.LocalAddr().String()
	l.Close() // nothing answers here
	r := NewResolver(addr)
	r.Timeout = 200 * time.Millisecond
	if _, err := r.Lookup(context.Background(), "b.example"); !errors.Is(err, ErrDNS) {
		t.Errorf("a dead DNS server: %v", err)
	}
}

// A lost datagram is asked again: the first query to this server goes
// unanswered, the next reaches the zone.
func TestLookupRetriesALostQuery(t *testing.T) {
	z := newZone(t, "_vwire._tcp.b.example. 30 IN SRV 10 100 7001 p1.b.example.", "p1.b.example. 30 IN A 127.0.0.11")
	lossy, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lossy.Close()
	go func() {
		buf := make([]byte, 4096)
		for i := 0; ; i++ {
			n, from, err := lossy.ReadFrom(buf)
			if err != nil {
				return
			}
			if i == 0 {
				continue // lost
			}
			up, err := net.Dial("udp", z.Addr)
			if err != nil {
				return
			}
			up.Write(buf[:n])
			up.SetReadDeadline(time.Now().Add(time.Second))
			if m, err := up.Read(buf); err == nil {
				lossy.WriteTo(buf[:m], from)
			}
			up.Close()
		}
	}()
	r := NewResolver(lossy.LocalAddr().String())
	r.Timeout = 600 * time.Millisecond
	ts, err := r.Lookup(context.Background(), "b.example")
	if err != nil || hosts(ts) != "p1.b.example" {
		t.Fatalf("after a lost query: %v, %v", hosts(ts), err)
	}
}

// During a DNS outage a domain looked up before is still found from its
// last answer, up to StaleMax after it expired, without a DNS timeout per
// look-up; a domain never looked up fails; so does one whose answer is
// older than StaleMax. "No such name" is believed, not replaced.
func TestLookupServesStale(t *testing.T) {
	z := newZone(t, "_vwire._tcp.b.example. 30 IN SRV 10 100 7001 p1.b.example.", "p1.b.example. 30 IN A 127.0.0.11")
	r := NewResolver(z.Addr)
	r.Timeout, r.StaleMax, r.StaleRecheck = 300*time.Millisecond, time.Hour, 30*time.Second
	now := time.Now()
	r.now = func() time.Time { return now }
	if _, err := r.Lookup(context.Background(), "b.example"); err != nil {
		t.Fatal(err)
	}
	z.Silence(true)
	now = now.Add(10 * time.Minute) // long past the 30 s TTL
	ts, err := r.Lookup(context.Background(), "b.example")
	if err != nil || hosts(ts) != "p1.b.example" || ts[0].Addresses()[0] != "127.0.0.11:7001" {
		t.Fatalf("a known domain during the outage: %v, %v", ts, err)
	}
	asked := z.Asked("", "_vwire._tcp.b.example./SRV")
	if _, err := r.Lookup(context.Background(), "b.example"); err != nil || z.Asked("", "_vwire._tcp.b.example./SRV") != asked {
		t.Errorf("within the recheck time the stale answer is used without asking: %v, asked %d then %d", err, asked, z.Asked("", "_vwire._tcp.b.example./SRV"))
	}
	if _, err := r.Lookup(context.Background(), "c.example"); !errors.Is(err, ErrDNS) {
		t.Errorf("a domain never looked up, during the outage: %v", err)
	}
	now = now.Add(2 * time.Hour) // past StaleMax
	if _, err := r.Lookup(context.Background(), "b.example"); !errors.Is(err, ErrDNS) {
		t.Errorf("an answer older than StaleMax: %v", err)
	}

	// DNS answers again, and says the domain is gone: that is believed.
	z2 := newZone(t)
	r2 := NewResolver(z2.Addr)
	r2.now = func() time.Time { return now }
	z2.Add(t, "_vwire._tcp.d.example. 1 IN SRV 10 100 7001 p1.d.example.", "p1.d.example. 1 IN A 127.0.0.12")
	if _, err := r2.Lookup(context.Background(), "d.example"); err != nil {
		t.Fatal(err)
	}
	z2.Remove("_vwire._tcp.d.example.", "SRV")
	now = now.Add(time.Minute)
	if _, err := r2.Lookup(context.Background(), "d.example"); !errors.Is(err, ErrUnknownDomain) {
		t.Errorf("a domain DNS says is gone: %v", err)
	}
}

// A slow server (past StaleWait): the stale answer comes at once, and the
// server's late answer still refreshes the cache in the background.
func TestLookupStaleWhileSlow(t *testing.T) {
	z := newZone(t, "_vwire._tcp.b.example. 30 IN SRV 10 100 7001 p1.b.example.", "p1.b.example. 30 IN A 127.0.0.11")
	r := NewResolver(z.Addr)
	r.Timeout, r.StaleWait = 3*time.Second, 200*time.Millisecond
	var clock atomic.Int64
	clock.Store(time.Now().UnixNano())
	r.now = func() time.Time { return time.Unix(0, clock.Load()) }
	if _, err := r.Lookup(context.Background(), "b.example"); err != nil {
		t.Fatal(err)
	}
	z.Silence(true)
	clock.Add(int64(10 * time.Minute))
	ts, err := r.Lookup(context.Background(), "b.example")
	if err != nil || ts[0].Addresses()[0] != "127.0.0.11:7001" {
		t.Fatalf("stale answer: %v, %v", ts, err)
	}
	// The server answers again, with a new address, while the background
	// look-ups still wait for it.
	z.Remove("p1.b.example.", "A")
	z.Add(t, "p1.b.example. 30 IN A 127.0.0.12")
	z.Silence(false)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		ts, err := r.Lookup(context.Background(), "b.example")
		if err == nil && ts[0].Addresses()[0] == "127.0.0.12:7001" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the late answer never reached the cache: %v, %v", ts, err)
		}
	}
}

// What DNS answers cannot grow the cache without bound: a flood of names
// that do not exist keeps at most MaxEntries, an answer with a TTL of
// decades is asked again after MaxTTL, and what is in use still answers.
func TestResolverCacheBounded(t *testing.T) {
	z := newZone(t, "_vwire._tcp.b.example. 2147483647 IN SRV 10 100 7001 p1.b.example.", "p1.b.example. 2147483647 IN A 127.0.0.11")
	r := NewResolver(z.Addr)
	r.MaxEntries = 50
	now := time.Now()
	r.now = func() time.Time { return now }
	if _, err := r.Lookup(context.Background(), "b.example"); err != nil {
		t.Fatal(err)
	}
	for i := range 200 {
		if _, err := r.Lookup(context.Background(), fmt.Sprintf("nowhere-%d.example", i)); !errors.Is(err, ErrUnknownDomain) {
			t.Fatalf("nowhere-%d.example: %v", i, err)
		}
		r.mu.Lock()
		n := len(r.cache)
		r.mu.Unlock()
		if n > r.MaxEntries {
			t.Fatalf("%d entries cached after %d unknown names, want at most %d", n, i+1, r.MaxEntries)
		}
	}
	if ts, err := r.Lookup(context.Background(), "b.example"); err != nil || ts[0].Addresses()[0] != "127.0.0.11:7001" {
		t.Fatalf("after the flood: %v, %v", ts, err)
	}
	key := "_vwire._tcp.b.example./SRV"
	asked := z.Asked("", key)
	now = now.Add(DefaultMaxTTL - time.Minute)
	r.Lookup(context.Background(), "b.example")
	if z.Asked("", key) != asked {
		t.Error("asked again before MaxTTL")
	}
	now = now.Add(2 * time.Minute)
	r.Lookup(context.Background(), "b.example")
	if z.Asked("", key) == asked {
		t.Error("an answer with a TTL of 68 years was kept past MaxTTL")
	}
}
