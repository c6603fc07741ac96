package proxy

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/miekg/dns"

	"github.com/vwire/vwire/internal/sameport"
)

// Zone serves a domain's own records for development (`vwire domain
// --dns-listen`), or several domains' (`vwire demo`): the SRV records of
// each domain's Records, each pointing at a target name
// "<service-label>-<n>.<domain>" with its A or AAAA record. Other names of
// those domains get NXDOMAIN; names outside them are refused.
type Zone struct {
	udp, tcp *dns.Server
	Addr     string
}

// ServeZone serves domain's records on addr (UDP and TCP) with ttl.
func ServeZone(addr, domain string, records []Record, ttl uint32) (*Zone, error) {
	pc, l, err := ListenDNS(addr)
	if err != nil {
		return nil, err
	}
	z, err := ServeZonesOn(pc, l, map[string][]Record{domain: records}, ttl)
	if err != nil {
		pc.Close()
		l.Close()
	}
	return z, err
}

// ListenDNS opens UDP and TCP on addr (the same port for both).
func ListenDNS(addr string) (net.PacketConn, net.Listener, error) {
	pc, l, err := sameport.Listen(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("--dns-listen: %w", err)
	}
	return pc, l, nil
}

// ServeZonesOn serves zones on sockets already open (a caller may open
// them inside another network namespace).
func ServeZonesOn(pc net.PacketConn, l net.Listener, zones map[string][]Record, ttl uint32) (*Zone, error) {
	var origins []string
	answers := map[string][]dns.RR{} // "name/TYPE"
	for domain, records := range zones {
		origin := dns.Fqdn(domain)
		origins = append(origins, origin)
		for i, r := range records {
			if err := addRecord(answers, origin, i, r, ttl); err != nil {
				return nil, err
			}
		}
	}
	inZones := func(name string) bool {
		for _, o := range origins {
			if dns.IsSubDomain(o, name) {
				return true
			}
		}
		return false
	}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		resp := new(dns.Msg)
		resp.SetReply(req)
		q := req.Question[0]
		name := strings.ToLower(q.Name)
		switch {
		case !inZones(name):
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
	z := &Zone{udp: &dns.Server{PacketConn: pc, Handler: handler}, tcp: &dns.Server{Listener: l, Handler: handler}, Addr: pc.LocalAddr().String()}
	go z.udp.ActivateAndServe()
	go z.tcp.ActivateAndServe()
	return z, nil
}

// addRecord adds r's SRV record (the n-th of origin) and its target's
// address record.
func addRecord(answers map[string][]dns.RR, origin string, n int, r Record, ttl uint32) error {
	host, port, err := net.SplitHostPort(r.Addr)
	if err != nil {
		return err
	}
	ip := net.ParseIP(host)
	if ip == nil || ip.IsUnspecified() {
		return fmt.Errorf("--dns-listen: %s would point at %q, which peers cannot reach (give --advertise)", r.Service, r.Addr)
	}
	portN, _ := strconv.Atoi(port)
	owner := r.Service + "." + origin
	target := strings.TrimPrefix(strings.SplitN(r.Service, ".", 2)[0], "_") + "-" + strconv.Itoa(n) + "." + origin
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
	return nil
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
