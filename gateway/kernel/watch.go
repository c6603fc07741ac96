package kernel

import (
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// watched is what a network namespace holds (its addresses and the routes
// of its main table, as holding reads them), kept as the kernel's
// notifications of their changes say: the overlap check of a new end
// reads it instead of every address and route of a namespace that holds
// a thousand ends.
//
// It may hold more than the namespace does, never less. Every address or
// route the kernel adds it notifies (its own prefix routes too), and a
// deletion it notifies removes exactly that entry; what goes without a
// word (IPv4 routes of a link taken down, a route another replaced) stays
// until a link's deletion removes all of its link's or the namespace is
// read again. So "no overlap" from it is what a full read would say, and
// an overlap is confirmed by a full read before an end is refused.
// Notifications the socket dropped (its buffer full) make it read
// everything again.
type watched struct {
	mu    sync.Mutex        // one check at a time
	what  string            // the namespace, for errors
	sub   *nl.NetlinkSocket // subscribed to links, addresses and routes
	dumps *nl.SocketHandle  // the namespace's dumpSocket, for full reads
	have  map[heldKey]bool
	// under has have's entries by the prefix each counts as (held.p): a
	// host address meets only entries at one of its 33 (129) prefixes,
	// looked up instead of walking a thousand ends' entries.
	under map[netip.Prefix][]heldKey
	fresh bool // have is what the namespace holds (false: read it again)
	reads int  // full reads so far
	buf   []byte
}

// watch subscribes to the changes of namespace nsh (netns.None(): the
// thread's own), queueing up to rcvbuf bytes of them between two checks
// (more only costs a full read); dumps is a dumpSocket there.
func watch(nsh netns.NsHandle, dumps *nl.SocketHandle, rcvbuf int) (*watched, error) {
	sub, err := nl.SubscribeAt(nsh, netns.None(), unix.NETLINK_ROUTE, unix.RTNLGRP_LINK,
		unix.RTNLGRP_IPV4_IFADDR, unix.RTNLGRP_IPV6_IFADDR, unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("subscribing to address and route changes: %w", err)
	}
	if err := unix.SetsockoptInt(sub.GetFd(), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf); err != nil {
		_ = unix.SetsockoptInt(sub.GetFd(), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)
	}
	return &watched{what: "the gateway's network namespace", sub: sub, dumps: dumps, buf: make([]byte, 1<<16)}, nil
}

func (w *watched) Close() { w.sub.Close() }

// meeting yields what a namespace holds (but on the links to skip) that
// overlaps a prefix: see watched.meeting.
type meeting func(p netip.Prefix) iter.Seq[held]

// check runs f with what the namespace holds but on the links in skip,
// brought up to date. If f finds fault with what it was given, and that
// was not just read in full, the namespace is read in full and f runs
// again: its second answer stands.
func (w *watched) check(skip map[int]bool, f func(meeting) error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	reread := !w.fresh
	if err := w.sync(); err != nil {
		return fmt.Errorf("reading %s: %w", w.what, err)
	}
	meets := func(p netip.Prefix) iter.Seq[held] { return w.meeting(p, skip) }
	if err := f(meets); err == nil || reread {
		return err
	}
	w.fresh = false
	if err := w.sync(); err != nil {
		return fmt.Errorf("reading %s: %w", w.what, err)
	}
	return f(meets)
}

// meeting yields what the namespace holds but on the links in skip that
// overlaps p, addresses first (see each). For a single address only the
// entries at its prefixes are looked at.
func (w *watched) meeting(p netip.Prefix, skip map[int]bool) iter.Seq[held] {
	if !p.IsSingleIP() {
		return func(yield func(held) bool) {
			for o := range w.each(skip) {
				if o.p.Overlaps(p) && !yield(o) {
					return
				}
			}
		}
	}
	return func(yield func(held) bool) {
		for _, routes := range []bool{false, true} {
			for bits := range p.Bits() + 1 {
				q, _ := p.Addr().Prefix(bits)
				for _, k := range w.under[q] {
					if o, _ := k.held(); k.route == routes && !skip[k.link] && !yield(o) {
						return
					}
				}
			}
		}
	}
}

// add and del keep k in have and under.
func (w *watched) add(k heldKey) {
	if w.have[k] {
		return
	}
	w.have[k] = true
	if o, ok := k.held(); ok {
		w.under[o.p] = append(w.under[o.p], k)
	}
}

func (w *watched) del(k heldKey) {
	if !w.have[k] {
		return
	}
	delete(w.have, k)
	if o, ok := k.held(); ok {
		ks := slices.DeleteFunc(w.under[o.p], func(h heldKey) bool { return h == k })
		if len(ks) == 0 {
			delete(w.under, o.p)
		} else {
			w.under[o.p] = ks
		}
	}
}

// each yields what the namespace holds but on the links in skip: its
// addresses first, as a full read does (an error names the first overlap
// it meets). (Not a list: at a thousand ends one would be 150 KB a check.)
func (w *watched) each(skip map[int]bool) iter.Seq[held] {
	return func(yield func(held) bool) {
		for _, routes := range []bool{false, true} {
			for k := range w.have {
				if o, ok := k.held(); ok && k.route == routes && !skip[k.link] && !yield(o) {
					return
				}
			}
		}
	}
}

// sync applies the notifications queued since the last, or (if have is
// not fresh, or notifications were lost) reads the namespace in full.
func (w *watched) sync() error {
	if !w.fresh {
		return w.reread()
	}
	for {
		n, from, err := unix.Recvfrom(w.sub.GetFd(), w.buf, unix.MSG_DONTWAIT)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		case err == nil && !fromKernel(from):
			continue
		case errors.Is(err, unix.ENOBUFS): // some were dropped
			return w.reread()
		case err != nil:
			return fmt.Errorf("reading address and route changes: %w", err)
		}
		if err := eachMessage(w.buf[:n], w.apply); err != nil {
			return w.reread()
		}
	}
}

// apply is one notification.
func (w *watched) apply(h *unix.NlMsghdr, body []byte) error {
	switch t := h.Type; t {
	case unix.RTM_DELLINK:
		if len(body) < unix.SizeofIfInfomsg {
			return fmt.Errorf("a link message of %d bytes", len(body))
		}
		// The link's routes and addresses went with it (IPv4's routes
		// without a notification).
		gone := int(nl.DeserializeIfInfomsg(body).Index)
		for k := range w.have {
			if k.link == gone {
				w.del(k)
			}
		}
	case unix.RTM_NEWADDR, unix.RTM_DELADDR, unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
		k, ok, err := parseHeld(t, body)
		switch {
		case err != nil:
			return err
		case !ok:
		case t == unix.RTM_NEWADDR || t == unix.RTM_NEWROUTE:
			w.add(k)
		default:
			w.del(k)
		}
	}
	return nil
}

// reread reads every address and main-table route of the namespace. The
// notifications queued before it are dropped (the read has what they
// say); those after it apply to what it read.
func (w *watched) reread() error {
	for {
		_, _, err := unix.Recvfrom(w.sub.GetFd(), w.buf, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil && !errors.Is(err, unix.ENOBUFS) && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("reading address and route changes: %w", err)
		}
	}
	w.have, w.under = map[heldKey]bool{}, map[netip.Prefix][]heldKey{}
	if err := eachHeld(w.dumps, w.add); err != nil {
		w.fresh = false
		return err
	}
	w.fresh = true
	w.reads++
	return nil
}

// watchIdle is how long a workload namespace's watch outlives the last
// change in it. A watch keeps its namespace alive (its sockets hold it):
// a pod's namespace deleted meanwhile, with the vWire halves in it, goes
// that much later. A namespace's watch pays for itself from the second
// end set up in it within that time, which a namespace that holds many
// ends (an endpoint's, taking clients) sees most.
const watchIdle = 2 * time.Second

// Watch buffers: the gateway's namespace sees the changes of every end
// between two checks; a workload's, those of its own ends (and of the
// workload, which could fill it on purpose: then it is read in full).
const (
	gatewayWatchBuffer  = 8 << 20
	workloadWatchBuffer = 1 << 20
)

// maxWorkloadWatches bounds the watches kept (a workload namespace's
// costs its sockets, 64 KB of buffer and what the namespace holds, for
// watchIdle after its last end): past it, a namespace's watch serves the
// ends being set up in it and goes with the last of them.
var maxWorkloadWatches = 64

// workloads are the watches of workload namespaces that ends were set up
// in lately, by name.
type workloads struct {
	mu sync.Mutex
	m  map[string]*nsWatch
}

// nsWatch is a workload namespace's watch, with the namespace it is of
// (device and inode: a namespace of the same name made anew is another),
// its users, and the timer that closes it once they have been gone for
// watchIdle.
type nsWatch struct {
	*watched // with its own dumpSocket
	dev, ino uint64
	users    int
	idle     *time.Timer
}

// check runs f (see watched.check) with what workload namespace name,
// open as nsh, holds, from its watch: the one kept, or a new one.
func (ws *workloads) check(name string, nsh netns.NsHandle, skip map[int]bool, f func(meeting) error) error {
	w, err := ws.get(name, nsh)
	if err != nil {
		return fmt.Errorf("watching network namespace %q: %w", name, err)
	}
	defer ws.put(name, w)
	return w.check(skip, f)
}

func (ws *workloads) get(name string, nsh netns.NsHandle) (*nsWatch, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(nsh), &st); err != nil {
		return nil, err
	}
	ws.mu.Lock()
	defer ws.mu.Unlock()
	w := ws.m[name]
	if w != nil && (w.dev != st.Dev || w.ino != st.Ino) {
		delete(ws.m, name) // another namespace now: the last user closes it
		w.idle.Stop()
		if w.users == 0 {
			w.close()
		}
		w = nil
	}
	if w == nil {
		dumps, err := dumpSocket(nsh)
		if err != nil {
			return nil, err
		}
		watched, err := watch(nsh, dumps, workloadWatchBuffer)
		if err != nil {
			dumps.Close()
			return nil, err
		}
		watched.what = fmt.Sprintf("network namespace %q", name)
		w = &nsWatch{watched: watched, dev: st.Dev, ino: st.Ino}
		// (Stopped below: it runs only while no end uses the watch.)
		w.idle = time.AfterFunc(watchIdle, func() { ws.expire(name, w) })
		if ws.m == nil {
			ws.m = map[string]*nsWatch{}
		}
		if len(ws.m) < maxWorkloadWatches {
			ws.m[name] = w
		} // else not kept: put closes it after its last user
	}
	w.idle.Stop()
	w.users++
	return w, nil
}

func (ws *workloads) put(name string, w *nsWatch) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	w.users--
	switch {
	case w.users > 0:
	case ws.m[name] == w:
		w.idle.Reset(watchIdle)
	default: // replaced while in use, or never kept
		w.close()
	}
}

// expire closes w if it is still name's and unused.
func (ws *workloads) expire(name string, w *nsWatch) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.m[name] == w && w.users == 0 {
		delete(ws.m, name)
		w.close()
	}
}

// Close closes every watch (none is in use).
func (ws *workloads) Close() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for name, w := range ws.m {
		w.idle.Stop()
		w.close()
		delete(ws.m, name)
	}
}

func (w *nsWatch) close() {
	w.watched.Close()
	w.watched.dumps.Close()
}
