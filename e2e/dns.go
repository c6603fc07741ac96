package e2e

import (
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"

	"github.com/vwire/vwire/internal/sameport"
)

// Zone is an in-process DNS server for tests (UDP and TCP on one loopback
// port): it answers from its records, can add glue or truncate UDP
// answers, and counts the questions it is asked.
type Zone struct {
	Addr string

	mu       sync.Mutex
	records  map[string][]dns.RR // "name./TYPE"
	glue     bool
	silent   bool
	truncate map[string]bool
	asked    map[string]int // "udp name./TYPE"
}

// NewZone serves the records (in zone-file syntax) until the test ends.
func NewZone(t testing.TB, records ...string) *Zone {
	t.Helper()
	z := &Zone{records: map[string][]dns.RR{}, truncate: map[string]bool{}, asked: map[string]int{}}
	z.Add(t, records...)
	pc, l, err := sameport.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	z.Addr = pc.LocalAddr().String()
	udp := &dns.Server{PacketConn: pc, Handler: z}
	tcp := &dns.Server{Listener: l, Handler: z}
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	t.Cleanup(func() { udp.Shutdown(); tcp.Shutdown() })
	return z
}

// Add adds records.
func (z *Zone) Add(t testing.TB, records ...string) {
	t.Helper()
	z.mu.Lock()
	defer z.mu.Unlock()
	for _, s := range records {
		rr, err := dns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		key := rr.Header().Name + "/" + dns.TypeToString[rr.Header().Rrtype]
		z.records[key] = append(z.records[key], rr)
	}
}

// Remove removes the records of name (with a final dot) and type.
func (z *Zone) Remove(name, typ string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	delete(z.records, name+"/"+typ)
}

// Glue makes SRV answers carry their targets' A records.
func (z *Zone) Glue() { z.mu.Lock(); z.glue = true; z.mu.Unlock() }

// Silence makes the server stop answering (true) or answer again (false):
// a DNS outage as a resolver sees it, every question timing out.
func (z *Zone) Silence(silent bool) { z.mu.Lock(); z.silent = silent; z.mu.Unlock() }

// Truncate makes UDP answers for name (with a final dot) truncated.
func (z *Zone) Truncate(name string) { z.mu.Lock(); z.truncate[name] = true; z.mu.Unlock() }

// Asked counts the questions for key ("name./TYPE") over network ("udp",
// "tcp"; "" for both).
func (z *Zone) Asked(network, key string) int {
	z.mu.Lock()
	defer z.mu.Unlock()
	if network == "" {
		return z.asked["udp "+key] + z.asked["tcp "+key]
	}
	return z.asked[network+" "+key]
}

// ServeDNS implements dns.Handler.
func (z *Zone) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	q := req.Question[0]
	key := q.Name + "/" + dns.TypeToString[q.Qtype]
	z.mu.Lock()
	z.asked[w.LocalAddr().Network()+" "+key]++
	if z.silent {
		z.mu.Unlock()
		return
	}
	answer, exists := z.records[key]
	for k := range z.records {
		exists = exists || strings.HasPrefix(k, q.Name+"/")
	}
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Authoritative = true
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
