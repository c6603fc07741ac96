// Package netprefix holds what the gateway and the proxy both ask of
// address prefixes a peer names.
package netprefix

import "net/netip"

// Within says whether one of prefixes contains p (all of it).
func Within(p netip.Prefix, prefixes []netip.Prefix) bool {
	for _, q := range prefixes {
		if q.Bits() <= p.Bits() && q.Contains(p.Addr()) {
			return true
		}
	}
	return false
}
