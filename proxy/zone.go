package proxy

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

// Zone serves a domain's own records for development (`vwire domain
// --dns-listen`): the SRV records of Records, each pointing at a target
// name "<service-label>-<n>.<domain>" with its A or AAAA record. Other
// names of the domain get NXDOMAIN; names outside it are refused.
type Zone struct {
	udp, tcp *dns.Server
	Addr     string
}

// ServeZone serves domain's records on addr (UDP and TCP) with ttl.
func ServeZone(addr, domain string, records []Record, ttl uint32) (*Zone, error) {
	origin := dns.Fqdn(domain)
	answers := map[string][]dns.RR{} // "name/TYPE"
	for i, r := range records {
		host, port, err := net.SplitHostPort(r.Addr)
		if err != nil {
			return nil, err
		}
		ip := net.ParseIP(host)
		if ip == nil || ip.IsUnspecified() {
			return nil, fmt.Errorf("--dns-listen: %s would point at %q, which peers cannot reach (give --advertise)", r.Service, r.Addr)
		}
		portN, _ := strconv.Atoi(port)
		owner := r.Service + "." + origin
		target := strings.TrimPrefix(strings.SplitN(r.Service, ".", 2)[0], "_") + "-" + strconv.Itoa(i) + "." + origin
		hdr := func(name string, t uint16) dns.RR_Header {
			return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
		}
		answers[owner+"/SRV"] = append(answers[owner+"/SRV"], &dns.SRV{Hdr: hdr(owner, dns.TypeSRV),
			Priority: uint16(r.Priority), Weight: uint16(r.Weight), Port: uint16(portN), Target: target})
		if ip4 := ip.To4(); ip4 != nil {
			answers[target+"/A"] = append(answers[target+"/A"], &dns.A{Hdr: hdr(target, dns.TypeA), A: ip4})
		} else {
			answers[target+"/AAAA"] = append(answers[target+"/AAAA"], &dns.AAAA{Hdr: hdr(target, dns.TypeAAAA), AAAA: ip})
		}
	}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		resp := new(dns.Msg)
		resp.SetReply(req)
		q := req.Question[0]
		name := strings.ToLower(q.Name)
		switch {
		case !dns.IsSubDomain(origin, name):
			resp.Rcode = dns.RcodeRefused
		default:
			resp.Authoritative = true
			resp.Answer = answers[name+"/"+dns.TypeToString[q.Qtype]]
			if len(resp.Answer) == 0 && !known(answers, name) {
				resp.Rcode = dns.RcodeNameError
			}
		}
		w.WriteMsg(resp)
	})
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("--dns-listen: %w", err)
	}
	l, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("--dns-listen: %w", err)
	}
	z := &Zone{udp: &dns.Server{PacketConn: pc, Handler: handler}, tcp: &dns.Server{Listener: l, Handler: handler}, Addr: pc.LocalAddr().String()}
	go z.udp.ActivateAndServe()
	go z.tcp.ActivateAndServe()
	return z, nil
}

func known(answers map[string][]dns.RR, name string) bool {
	for k := range answers {
		if strings.HasPrefix(k, name+"/") {
			return true
		}
	}
	return false
}

// Close stops serving.
func (z *Zone) Close() error {
	return errors.Join(z.udp.Shutdown(), z.tcp.Shutdown())
}
