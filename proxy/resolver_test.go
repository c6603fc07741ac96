package proxy

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// zone is an in-process DNS server for tests: it answers from records and
// counts what it is asked.
type zone struct {
	mu       sync.Mutex
	records  map[string][]dns.RR // "name/TYPE"
	glue     bool
	truncate map[string]bool // names whose UDP answers are truncated
	asked    map[string]int  // "net name/TYPE"
	addr     string
}

func newZone(t *testing.T, rrs ...string) *zone {
	t.Helper()
	z := &zone{records: map[string][]dns.RR{}, truncate: map[string]bool{}, asked: map[string]int{}}
	for _, s := range rrs {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		key := rr.Header().Name + "/" + dns.TypeToString[rr.Header().Rrtype]
		z.records[key] = append(z.records[key], rr)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	z.addr = pc.LocalAddr().String()
	udp := &dns.Server{PacketConn: pc, Handler: z}
	tcp := &dns.Server{Listener: l, Handler: z}
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	t.Cleanup(func() { udp.Shutdown(); tcp.Shutdown() })
	return z
}

func (z *zone) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	q := req.Question[0]
	key := q.Name + "/" + dns.TypeToString[q.Qtype]
	z.mu.Lock()
	z.asked[w.LocalAddr().Network()+" "+key]++
	answer, known := z.records[key]
	exists := known
	for k := range z.records {
		if strings.HasPrefix(k, q.Name+"/") {
			exists = true
		}
	}
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Answer = answer
	if !exists {
		resp.Rcode = dns.RcodeNameError
	}
	if z.glue && q.Qtype == dns.TypeSRV {
		for _, rr := range answer {
			resp.Extra = append(resp.Extra, z.records[rr.(*dns.SRV).Target+"/A"]...)
		}
	}
	if z.truncate[q.Name] && w.LocalAddr().Network() == "udp" {
		resp.Answer, resp.Truncated = nil, true
	}
	z.mu.Unlock()
	w.WriteMsg(resp)
}

func (z *zone) count(key string) int {
	z.mu.Lock()
	defer z.mu.Unlock()
	return z.asked["udp "+key] + z.asked["tcp "+key]
}

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
	r := NewResolver(z.addr)
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
	r := NewResolver(z.addr)
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
	r := NewResolver(z.addr)
	now := time.Now()
	r.now = func() time.Time { return now }
	for i := 0; i < 5; i++ {
		if _, err := r.Lookup(context.Background(), "b.example"); err != nil {
			t.Fatal(err)
		}
	}
	if n := z.count("_vwire._tcp.b.example./SRV"); n != 1 {
		t.Errorf("asked %d times within the TTL, want 1", n)
	}
	now = now.Add(31 * time.Second)
	r.Lookup(context.Background(), "b.example")
	if n, a := z.count("_vwire._tcp.b.example./SRV"), z.count("p1.b.example./A"); n != 2 || a != 1 {
		t.Errorf("after the SRV TTL: SRV asked %d times (want 2), A %d (want 1: its TTL is longer)", n, a)
	}
}

func TestLookupUnknownDomainIsCachedBriefly(t *testing.T) {
	z := newZone(t)
	r := NewResolver(z.addr)
	now := time.Now()
	r.now = func() time.Time { return now }
	for i := 0; i < 3; i++ {
		_, err := r.Lookup(context.Background(), "nowhere.example")
		if !errors.Is(err, ErrUnknownDomain) || !strings.Contains(err.Error(), "no _vwire._tcp.nowhere.example SRV record") {
			t.Fatalf("unknown domain: %v", err)
		}
	}
	if n := z.count("_vwire._tcp.nowhere.example./SRV"); n != 1 {
		t.Errorf("negative answer asked %d times, want 1", n)
	}
	now = now.Add(6 * time.Second)
	r.Lookup(context.Background(), "nowhere.example")
	if n := z.count("_vwire._tcp.nowhere.example./SRV"); n != 2 {
		t.Errorf("negative answer not asked again after NegativeTTL")
	}
}

func TestLookupTruncatedRetriesOverTCP(t *testing.T) {
	z := newZone(t,
		"_vwire._tcp.b.example. 30 IN SRV 10 100 7001 p1.b.example.",
		"p1.b.example. 30 IN A 127.0.0.11",
	)
	z.truncate["_vwire._tcp.b.example."] = true
	ts, err := NewResolver(z.addr).Lookup(context.Background(), "b.example")
	if err != nil || len(ts) != 1 {
		t.Fatalf("%v, %v", ts, err)
	}
	if z.asked["tcp _vwire._tcp.b.example./SRV"] != 1 {
		t.Error("the truncated answer was not asked again over TCP")
	}
}

func TestLookupUsesGlue(t *testing.T) {
	z := newZone(t,
		"_vwire._tcp.b.example. 30 IN SRV 10 100 7001 p1.b.example.",
		"p1.b.example. 30 IN A 127.0.0.11",
	)
	z.glue = true
	ts, err := NewResolver(z.addr).Lookup(context.Background(), "b.example")
	if err != nil || ts[0].Addresses()[0] != "127.0.0.11:7001" {
		t.Fatalf("%v, %v", ts, err)
	}
	if n := z.count("p1.b.example./A"); n != 0 {
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
