package e2e

import (
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"testing"
)

// Ports for real components that must be told theirs on the command line
// (etcd, SPIRE, CoreDNS) come from below the kernel's ephemeral range
// (32768–60999 here), so that no socket another test opens on port 0, nor
// an outgoing connection, can take one between FreePort and the
// component's bind. Tests run as packages in parallel, each its own
// process, so FreePort picks at random and checks the port is free.
const (
	portLow  = 20000
	portHigh = 32000
)

var given sync.Map // ports this process handed out

// FreePort is a loopback port free for TCP and UDP when asked, below the
// ephemeral range and not handed out before by this process.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 1000 {
		port := portLow + rand.IntN(portHigh-portLow)
		if _, taken := given.LoadOrStore(port, true); taken {
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", addr)
		l.Close()
		if err != nil {
			continue
		}
		pc.Close()
		return port
	}
	t.Fatalf("no free port in %d-%d", portLow, portHigh)
	return 0
}
