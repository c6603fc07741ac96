// Package sameport opens a UDP and a TCP socket on one port, as a DNS
// server needs.
package sameport

import (
	"errors"
	"net"
	"syscall"
)

// tries bounds the search for a port free for both protocols when the
// caller leaves the choice to the kernel.
const tries = 20

// Listen listens on addr with UDP and TCP. With port 0 the kernel picks the
// UDP port; if something else holds that port for TCP (another program's
// ephemeral port), Listen lets go and asks again, up to 20 times.
func Listen(addr string) (net.PacketConn, net.Listener, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	for i := 0; ; i++ {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, err
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, l, nil
		}
		pc.Close()
		if port != "0" || i == tries-1 || !errors.Is(err, syscall.EADDRINUSE) {
			return nil, nil, err
		}
	}
}
