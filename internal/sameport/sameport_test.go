package sameport

import (
	"net"
	"strings"
	"testing"
)

// A kernel-chosen port whose TCP side is taken is given up for another;
// a port the caller named is not.
func TestListen(t *testing.T) {
	// Hold TCP on a sixth of the ephemeral ports: without a retry, one of
	// the 50 listens below would all but surely hit one of them.
	var held []net.Listener
	defer func() {
		for _, l := range held {
			l.Close()
		}
	}()
	for range 5000 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
	}
	for range 50 {
		pc, l, err := Listen("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if pc.LocalAddr().String() != l.Addr().String() {
			t.Errorf("UDP on %s, TCP on %s", pc.LocalAddr(), l.Addr())
		}
		pc.Close()
		l.Close()
	}

	_, _, err := Listen(held[0].Addr().String())
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("named port held for TCP: err %v, want address already in use", err)
	}
	if _, _, err := Listen("127.0.0.1"); err == nil {
		t.Error("an address without a port was accepted")
	}
}
