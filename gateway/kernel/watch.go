package kernel

import (
	"errors"
	"fmt"
	"sync"

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
	sub   *nl.NetlinkSocket // subscribed to links, addresses and routes
	dumps *nl.SocketHandle  // the namespace's dumpSocket, for full reads
	have  map[heldKey]bool
	fresh bool // have is what the namespace holds (false: read it again)
	reads int  // full reads so far
	buf   []byte
}

// watch subscribes to the changes of namespace nsh (netns.None(): the
// thread's own); dumps is a dumpSocket there.
func watch(nsh netns.NsHandle, dumps *nl.SocketHandle) (*watched, error) {
	sub, err := nl.SubscribeAt(nsh, netns.None(), unix.NETLINK_ROUTE, unix.RTNLGRP_LINK,
		unix.RTNLGRP_IPV4_IFADDR, unix.RTNLGRP_IPV6_IFADDR, unix.RTNLGRP_IPV4_ROUTE, unix.RTNLGRP_IPV6_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("subscribing to address and route changes: %w", err)
	}
	// Room for the changes of many ends between two checks; a smaller
	// buffer only costs full reads.
	if err := unix.SetsockoptInt(sub.GetFd(), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
		_ = unix.SetsockoptInt(sub.GetFd(), unix.SOL_SOCKET, unix.SO_RCVBUF, 8<<20)
	}
	return &watched{sub: sub, dumps: dumps, buf: make([]byte, 1<<16)}, nil
}

func (w *watched) Close() { w.sub.Close() }

// check runs f with what the namespace holds but on the links in skip,
// brought up to date. If f finds fault with what it was given, and that
// was not just read in full, the namespace is read in full and f runs
// again: its second answer stands.
func (w *watched) check(skip map[int]bool, f func([]held) error) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	reread := !w.fresh
	if err := w.sync(); err != nil {
		return fmt.Errorf("reading the gateway's network namespace: %w", err)
	}
	if err := f(w.held(skip)); err == nil || reread {
		return err
	}
	w.fresh = false
	if err := w.sync(); err != nil {
		return fmt.Errorf("reading the gateway's network namespace: %w", err)
	}
	return f(w.held(skip))
}

// held lists what the namespace holds but on the links in skip: its
// addresses first, as a full read does (an error names the first overlap
// it meets).
func (w *watched) held(skip map[int]bool) []held {
	out := make([]held, 0, len(w.have))
	for _, routes := range []bool{false, true} {
		for k := range w.have {
			if o, ok := k.held(); ok && k.route == routes && !skip[k.link] {
				out = append(out, o)
			}
		}
	}
	return out
}

// sync applies the notifications queued since the last, or (if have is
// not fresh, or notifications were lost) reads the namespace in full.
func (w *watched) sync() error {
	if !w.fresh {
		return w.reread()
	}
	for {
		n, _, err := unix.Recvfrom(w.sub.GetFd(), w.buf, unix.MSG_DONTWAIT)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return nil
		case errors.Is(err, unix.EINTR):
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
				delete(w.have, k)
			}
		}
	case unix.RTM_NEWADDR, unix.RTM_DELADDR, unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
		k, ok, err := parseHeld(t, body)
		switch {
		case err != nil:
			return err
		case !ok:
		case t == unix.RTM_NEWADDR || t == unix.RTM_NEWROUTE:
			w.have[k] = true
		default:
			delete(w.have, k)
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
	have := map[heldKey]bool{}
	if err := eachHeld(w.dumps, func(k heldKey) { have[k] = true }); err != nil {
		return err
	}
	w.have, w.fresh = have, true
	w.reads++
	return nil
}
