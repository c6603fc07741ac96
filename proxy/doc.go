// Package proxy is a domain's control plane and public edge. It finds other
// domains' proxies through DNS SRV records (_vwire._tcp.<domain>), keeps one
// pooled mutual-TLS connection per peer domain, and forwards what names
// another domain (service@domain) to it: today registry look-ups, and the
// network service API (proxypb) as it lands.
package proxy
