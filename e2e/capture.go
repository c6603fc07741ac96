package e2e

import (
	"bytes"
	"fmt"
	"net"
	"runtime"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// Capture records the frames that cross link dev in network namespace ns
// (a name in /run/netns), as tcpdump would, until the returned stop, which
// gives their bytes (at most 16 MiB): for tests that check what crosses a
// link in clear.
func Capture(t testing.TB, ns, dev string) (stop func() []byte) {
	t.Helper()
	fd, err := packetSocket(ns, dev)
	if err != nil {
		t.Fatalf("capturing on %s in %s: %v", dev, ns, err)
	}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100_000})
	var mu sync.Mutex
	var seen bytes.Buffer
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		buf := make([]byte, 65536)
		for {
			select {
			case <-done:
				return
			default:
			}
			if n, _, err := unix.Recvfrom(fd, buf, 0); err == nil && n > 0 {
				mu.Lock()
				if seen.Len() < 16<<20 {
					seen.Write(buf[:n])
				}
				mu.Unlock()
			}
		}
	}()
	var once sync.Once
	stop = func() []byte {
		once.Do(func() {
			close(done)
			<-stopped
			unix.Close(fd)
		})
		mu.Lock()
		defer mu.Unlock()
		return bytes.Clone(seen.Bytes())
	}
	t.Cleanup(func() { stop() })
	return stop
}

// packetSocket opens an AF_PACKET socket on dev inside namespace ns (the
// socket stays there).
func packetSocket(ns, dev string) (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(orig)
	target, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("network namespace %q: %w", ns, err)
	}
	defer unix.Close(target)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		return -1, err
	}
	defer func() {
		if unix.Setns(orig, unix.CLONE_NEWNET) != nil {
			runtime.LockOSThread() // never hand this thread back: it is in the wrong namespace
		}
	}()
	ifi, err := net.InterfaceByName(dev)
	if err != nil {
		return -1, err
	}
	proto := htons(unix.ETH_P_ALL)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(proto))
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifi.Index}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
