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
// the throughput (docs/benchmarks.md). Out of the tunnel, consecutive
// segments of one stream are joined again and go into the kernel in one
// write through a TAP beside it; the rest goes through wireguard-go's own
// TUN.
//
// It is a tun.Device for wireguard-go: Read waits for either device and
// takes turns when both have packets.
type ethernetTUN struct {
	tun.Device // wireguard-go's own

	own     int          // wireguard-go's TUN's descriptor
	fd, tap atomic.Int32 // the Ethernet TUN (non-blocking) and the TAP the joined packets go into; -1 until made
	eth     [14]byte     // the joined packets' Ethernet header
	wake    int          // an eventfd: Close, or the Ethernet devices made, end a waiting poll
	closed  atomic.Bool
	reading sync.Mutex // held by Read: Close closes wake after it
	making  sync.Mutex // Ethernet's, and Close's

	buf     []byte // one read, virtio header first
	seg     segmenter
	ownTurn bool
	polled  [3]unix.PollFd

	writing sync.Mutex // Write's, called by each peer's receiver
	items   []groItem
	joined  []bool
	rest    [][]byte
	iov     [][]byte
	hdr     [vnetHdrLen]byte
}

// ethernetName is the Ethernet TUN's name for WireGuard device name, its
// second letter made "e"; the TAP's is the same with "f".
func ethernetName(name string) string { return name[:1] + "e" + name[2:] }

func tapName(name string) string { return name[:1] + "f" + name[2:] }

// newEthernetTUN wraps own, wireguard-go's TUN, so that Ethernet devices
// can be added to it later (Ethernet); until then Read and Write are
// own's, with a poll before each read.
func newEthernetTUN(own tun.Device) (*ethernetTUN, error) {
	t := &ethernetTUN{Device: own, wake: -1}
	t.fd.Store(-1)
	t.tap.Store(-1)
	var err error
	if t.own, err = fdOf(own.File()); err != nil {
		return nil, err
	}
	if t.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return t, nil
}

// Ethernet makes the Ethernet TUN and TAP for WireGuard device name, at
// its MTU, the first time an Ethernet vWire goes through it, and returns
// the TUN's name. The kernel must take UDP-tunnel offloads (Linux 6.17).
func (t *ethernetTUN) Ethernet(name string) (string, error) {
	t.making.Lock()
	defer t.making.Unlock()
	if t.closed.Load() { // none made after Close: they would stay
		return "", os.ErrClosed
	}
	if t.fd.Load() >= 0 {
		return ethernetName(name), nil
	}
	if len(name) < 2 || name[1] == 'e' || name[1] == 'f' {
		return "", fmt.Errorf("no room beside %q for its Ethernet TUN's name", name)
	}
	mtu, err := t.Device.MTU()
	if err != nil {
		return "", err
	}
	fd, err := openTUN(ethernetName(name), unix.IFF_TUN, mtu)
	if err != nil {
		return "", err
	}
	tap, err := openTUN(tapName(name), unix.IFF_TAP, mtu)
	var link netlink.Link
	if err == nil {
		if link, err = netlink.LinkByName(tapName(name)); err != nil {
			unix.Close(tap)
		}
	}
	if err != nil {
		unix.Close(fd)
		return "", err
	}
	t.writing.Lock()
	copy(t.eth[:6], link.Attrs().HardwareAddr) // to the TAP itself
	t.eth[6] = 0x02                            // from a local address
	t.tap.Store(int32(tap))
	t.writing.Unlock()
	t.buf = make([]byte, vnetHdrLen+65535)
	t.fd.Store(int32(fd))
	t.poke() // a Read waiting on own alone
	return ethernetName(name), nil
}

// poke ends a poll that Read is waiting in.
func (t *ethernetTUN) poke() {
	var one [8]byte
	one[0] = 1
	_, _ = unix.Write(t.wake, one[:])
}

// openTUN makes the TUN or TAP device name (kind), with virtio headers of
// vnetHdrLen and UDP-tunnel offloads, and brings it up at mtu.
func openTUN(name string, kind uint16, mtu int) (fd int, err error) {
	if fd, err = unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0); err != nil {
		return -1, fmt.Errorf("opening /dev/net/tun: %w", err)
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
			fd = -1
		}
	}()
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return -1, err
	}
	ifr.SetUint16(kind | unix.IFF_NO_PI | unix.IFF_VNET_HDR)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		return -1, fmt.Errorf("TUN %s: %w", name, err)
	}
	size := int32(vnetHdrLen)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETVNETHDRSZ, uintptr(unsafe.Pointer(&size))); e != 0 {
		return -1, fmt.Errorf("virtio header of %d bytes on %s: %w", vnetHdrLen, name, e)
	}
	offloads := unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6 | unix.TUN_F_TSO_ECN | tunFUDPTunnelGSO | tunFUDPTunnelGSOCsum
	if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, offloads); err != nil {
		return -1, fmt.Errorf("UDP-tunnel offloads on %s (Linux 6.17 or later): %w", name, err)
	}
	link, err := netlink.LinkByName(name)
	if err == nil {
		err = netlink.LinkSetMTU(link, mtu)
	}
	if err == nil {
		err = netlink.LinkSetUp(link)
	}
	if err != nil {
		return -1, fmt.Errorf("bringing %s up: %w", name, err)
	}
	return fd, nil
}

func (t *ethernetTUN) closeFiles() {
	for _, fd := range []int{int(t.fd.Swap(-1)), int(t.tap.Swap(-1)), t.wake} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
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
		fds := t.polled[:2]
		fds[0] = unix.PollFd{Fd: int32(t.wake), Events: unix.POLLIN}
		fds[1] = unix.PollFd{Fd: int32(t.own), Events: unix.POLLIN}
		if fd := t.fd.Load(); fd >= 0 {
			fds = append(fds, unix.PollFd{Fd: fd, Events: unix.POLLIN})
		}
		if _, err := unix.Poll(fds, -1); err != nil && !errors.Is(err, unix.EINTR) {
			return 0, fmt.Errorf("waiting for the TUN devices: %w", err)
		}
		if fds[0].Revents != 0 {
			var n [8]byte
			_, _ = unix.Read(t.wake, n[:]) // Ethernet devices made; a Close is seen above
			continue
		}
		own, eth := fds[1].Revents != 0, len(fds) > 2 && fds[2].Revents != 0
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
	n, err := unix.Read(int(t.fd.Load()), t.buf)
	if err != nil || n == 0 {
		return // EAGAIN, or closed: the next turn says
	}
	if err := t.seg.load(t.buf[:n]); err != nil {
		t.seg.next = 0
	}
}

// Write hands the kernel packets out of the tunnel: consecutive segments
// of a TCP stream inside VXLAN joined into one packet through the TAP (see
// coalesce), the rest through wireguard-go's own TUN, which joins what it
// can of them.
func (t *ethernetTUN) Write(bufs [][]byte, offset int) (int, error) {
	t.writing.Lock()
	defer t.writing.Unlock()
	if t.closed.Load() { // its descriptors may be another file's by now
		return 0, os.ErrClosed
	}
	if len(t.joined) < len(bufs) {
		t.joined = make([]bool, len(bufs))
	}
	t.items = t.items[:0]
	if t.tap.Load() >= 0 { // else no Ethernet vWire yet: nothing to join
		t.items = coalesce(bufs, offset, t.items, t.joined)
	} else {
		clear(t.joined)
	}
	var err error
	for k := range t.items {
		it := &t.items[k]
		if it.n < 2 {
			continue
		}
		p := bufs[it.buf][offset:]
		it.finish(p, t.hdr[:], len(t.eth))
		eth := t.eth
		eth[12], eth[13] = 0x08, 0x00
		if it.l.outer6 {
			eth[12], eth[13] = 0x86, 0xdd
		}
		t.iov = append(append(t.iov[:0], t.hdr[:], eth[:], p), it.iov...)
		if _, werr := unix.Writev(int(t.tap.Load()), t.iov); werr != nil && err == nil {
			err = fmt.Errorf("writing %d joined segments to the Ethernet TAP: %w", it.n, werr)
		}
		t.joined[it.buf] = true
	}
	t.rest = t.rest[:0]
	for i, b := range bufs {
		if !t.joined[i] {
			t.rest = append(t.rest, b)
		}
	}
	if len(t.rest) > 0 {
		if _, werr := t.Device.Write(t.rest, offset); werr != nil && err == nil {
			err = werr
		}
	}
	return len(bufs), err
}

// Close closes both devices and ends a waiting Read.
func (t *ethernetTUN) Close() error {
	if t.closed.Swap(true) {
		return nil
	}
	t.poke()
	err := t.Device.Close() // ends a Read waiting in it
	t.making.Lock()
	defer t.making.Unlock()
	t.reading.Lock()
	t.writing.Lock()
	t.closeFiles()
	t.writing.Unlock()
	t.reading.Unlock()
	return err
}
