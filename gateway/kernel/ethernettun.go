package kernel

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// ethernetTUN is the second TUN device of an embedded wireguard-go: routes
// to peer gateways' inner addresses point into it, so the VXLAN packets of
// Ethernet ends reach wireguard-go as the kernel built them, a TCP segment
// of up to 64 KB inside its VXLAN headers in one read, and are cut here.
// Through wireguard-go's own TUN, which cannot take UDP-tunnel segments,
// the kernel cuts them first and each packet costs a read: a seventh of
// the throughput (docs/benchmarks.md). Packets coming out of the tunnel
// still go into wireguard-go's own TUN, which batches them for the kernel.
//
// It is a tun.Device for wireguard-go: Read waits for either device and
// takes turns when both have packets.
type ethernetTUN struct {
	tun.Device // wireguard-go's own

	file    *os.File // the Ethernet TUN, non-blocking
	fd, own int      // its descriptor and the own TUN's
	wake    int      // an eventfd Close writes, to end a waiting Read
	closed  atomic.Bool
	reading sync.Mutex // held by Read: Close closes wake after it

	buf     []byte // one read, virtio header first
	seg     segmenter
	ownTurn bool
}

// ethernetName is the Ethernet TUN's name for WireGuard device name: its
// second letter made "e" (or "f" where it is one).
func ethernetName(name string) string {
	c := "e"
	if name[1] == 'e' {
		c = "f"
	}
	return name[:1] + c + name[2:]
}

// newEthernetTUN makes the Ethernet TUN named name at mtu beside own,
// wireguard-go's TUN. The kernel must take UDP-tunnel offloads (Linux 6.17).
func newEthernetTUN(own tun.Device, name string, mtu int) (t *ethernetTUN, err error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("opening /dev/net/tun: %w", err)
	}
	file := os.NewFile(uintptr(fd), "/dev/net/tun")
	defer func() {
		if err != nil {
			file.Close()
		}
	}()
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return nil, err
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return nil, fmt.Errorf("TUN %s: %w", name, err)
	}
	size := int32(vnetHdrLen)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETVNETHDRSZ, uintptr(unsafe.Pointer(&size))); e != 0 {
		return nil, fmt.Errorf("virtio header of %d bytes on %s: %w", vnetHdrLen, name, e)
	}
	offloads := unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6 | unix.TUN_F_TSO_ECN | tunFUDPTunnelGSO | tunFUDPTunnelGSOCsum
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, offloads); err != nil {
		return nil, fmt.Errorf("UDP-tunnel offloads on %s (Linux 6.17 or later): %w", name, err)
	}
	t = &ethernetTUN{Device: own, file: file, fd: fd, buf: make([]byte, vnetHdrLen+65535), wake: -1}
	if t.own, err = fdOf(own.File()); err != nil {
		return nil, err
	}
	if t.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	link, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.LinkSetMTU(link, mtu)
	}
	if err == nil {
		err = netlink.LinkSetUp(link)
	}
	if err != nil {
		unix.Close(t.wake)
		return nil, fmt.Errorf("bringing %s up: %w", name, err)
	}
	return t, nil
}

// fdOf is f's descriptor, leaving f non-blocking (File.Fd would not).
func fdOf(f *os.File) (fd int, err error) {
	c, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	err = c.Control(func(d uintptr) { fd = int(d) })
	return fd, err
}

// Read reads from whichever device has packets: wireguard-go's own
// through its Read, or the Ethernet TUN, whose packets it cuts.
func (t *ethernetTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	t.reading.Lock()
	defer t.reading.Unlock()
	for {
		if t.closed.Load() {
			return 0, os.ErrClosed
		}
		if t.seg.pending() {
			if n := t.seg.cut(bufs, sizes, offset); n > 0 || !t.seg.pending() {
				return n, nil
			}
		}
		fds := []unix.PollFd{{Fd: int32(t.wake), Events: unix.POLLIN}, {Fd: int32(t.own), Events: unix.POLLIN}, {Fd: int32(t.fd), Events: unix.POLLIN}}
		if _, err := unix.Poll(fds, -1); err != nil && !errors.Is(err, unix.EINTR) {
			return 0, fmt.Errorf("waiting for the TUN devices: %w", err)
		}
		if fds[0].Revents != 0 {
			continue
		}
		own, eth := fds[1].Revents != 0, fds[2].Revents != 0
		t.ownTurn = !t.ownTurn
		if own && (t.ownTurn || !eth) {
			return t.Device.Read(bufs, sizes, offset)
		}
		if eth {
			t.readEthernet()
		}
	}
}

// readEthernet takes one packet from the Ethernet TUN for cutting, or
// drops it when its headers are not what the kernel promised.
func (t *ethernetTUN) readEthernet() {
	n, err := unix.Read(t.fd, t.buf)
	if err != nil || n == 0 {
		return // EAGAIN, or closed: the next turn says
	}
	if err := t.seg.load(t.buf[:n]); err != nil {
		t.seg.next = 0
	}
}

// Close closes both devices and ends a waiting Read.
func (t *ethernetTUN) Close() error {
	if t.closed.Swap(true) {
		return nil
	}
	var one [8]byte
	one[0] = 1
	_, _ = unix.Write(t.wake, one[:])
	err := t.Device.Close() // ends a Read waiting in it
	t.reading.Lock()
	t.file.Close()
	unix.Close(t.wake)
	t.reading.Unlock()
	return err
}
