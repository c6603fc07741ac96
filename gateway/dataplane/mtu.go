package dataplane

import "fmt"

// Overheads of the tunnels a vWire may cross, in bytes, over IPv4 (IPv6
// adds 20 to each).
const (
	// WireGuardOverhead: IPv4 20 + UDP 8 + WireGuard 32 (type, index,
	// counter, tag).
	WireGuardOverhead = 60
	// VXLANOverhead: IPv4 20 + UDP 8 + VXLAN 8 + the inner Ethernet 14.
	VXLANOverhead = 50
)

// PathMTU is the MTU to give both ends of a vWire whose packets leave the
// gateway on a link of outer MTU wrapped in the given tunnel overheads
// (outermost first, e.g. VXLAN carried in WireGuard). Both ends get it, so
// TCP's MSS fits the path without fragmentation or clamping on the vWire.
func PathMTU(outer int, ipv6Underlay bool, overheads ...int) (int, error) {
	mtu := outer
	for _, o := range overheads {
		if ipv6Underlay {
			o += 20
		}
		mtu -= o
	}
	if mtu < 1280 {
		return 0, fmt.Errorf("a %d-byte outer MTU leaves %d bytes inside the tunnels, less than IPv6's minimum 1280", outer, mtu)
	}
	return mtu, nil
}
