// Package handover brings a workload's network namespace to its node's
// gateway. A workload in a container hands it as a file descriptor over a
// unix socket (SCM_RIGHTS), so that the gateway needs neither the host's
// PID namespace nor a namespace name: the kernel vouches that the
// descriptor is the sender's. A workload on a host may name one instead.
// Either way the gateway refuses its own namespace and the host's, and
// pins a handed one at a path (as `ip netns add` does) for the rest of the
// data plane.
package handover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
)

// Before gRPC starts on a connection, the side that hands says hello once,
// with the descriptor (helloNS) or without one (helloNone); the other side
// reads it. A client hands to the gateway's socket (vwire connect); an
// endpoint's server hands to the gateway that dials it (vwire endpoint).
const (
	helloNS   = "vwire-netns:1\n"
	helloNone = "vwire-netns:0\n"
	// helloTimeout bounds the wait for the other side's hello.
	helloTimeout = 5 * time.Second
)

// HandNS is the transport credentials of the side that hands its network
// namespace ns (nil: none; the requests name one instead) over a unix
// socket, as client or as server.
func HandNS(ns *os.File) credentials.TransportCredentials { return &handing{ns: ns} }

// ReceiveNS is the transport credentials of the side that takes a handed
// namespace: each connection's AuthInfo is a *Handed.
func ReceiveNS() credentials.TransportCredentials { return &handing{receive: true} }

// Handed is the AuthInfo of a connection made with ReceiveNS: the
// namespace the other side handed (nil if none) and, on a server, the
// caller's uid and pid as the kernel gives them (SO_PEERCRED; -1 unknown).
// The namespace is open while the connection is.
type Handed struct {
	credentials.CommonAuthInfo
	NS       *os.File
	UID, PID int32
}

// AuthType implements credentials.AuthInfo.
func (*Handed) AuthType() string { return "vwire-unix" }

type handing struct {
	ns      *os.File
	receive bool
}

func (h *handing) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return h.handshake(c, false)
}

func (h *handing) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return h.handshake(c, true)
}

func (h *handing) handshake(c net.Conn, server bool) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, nil, fmt.Errorf("a network namespace is handed over a unix socket only, not %s", c.RemoteAddr().Network())
	}
	info := &Handed{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, UID: -1, PID: -1}
	if server {
		if raw, err := uc.SyscallConn(); err == nil {
			raw.Control(func(fd uintptr) {
				if cred, err := syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED); err == nil {
					info.UID, info.PID = int32(cred.Uid), cred.Pid
				}
			})
		}
	}
	uc.SetDeadline(time.Now().Add(helloTimeout))
	defer uc.SetDeadline(time.Time{})
	if !h.receive {
		var rights []byte
		hello := helloNone
		if h.ns != nil {
			hello, rights = helloNS, unix.UnixRights(int(h.ns.Fd()))
		}
		if _, _, err := uc.WriteMsgUnix([]byte(hello), rights, nil); err != nil {
			return nil, nil, fmt.Errorf("handing the network namespace: %w", err)
		}
		return c, info, nil
	}
	ns, err := readHello(uc)
	if err != nil {
		return nil, nil, err
	}
	info.NS = ns
	return &handedConn{UnixConn: uc, ns: ns}, info, nil
}

// readHello reads the other side's hello and the descriptor that came
// with it.
func readHello(uc *net.UnixConn) (*os.File, error) {
	buf, oob := make([]byte, len(helloNS)), make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, fmt.Errorf("the other side said no hello (an older vwire?): %w", err)
	}
	var fds []int
	if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, m := range msgs {
			if got, err := unix.ParseUnixRights(&m); err == nil {
				fds = append(fds, got...)
			}
		}
	}
	closeAll := func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	if _, err := io.ReadFull(uc, buf[n:]); err != nil {
		closeAll()
		return nil, fmt.Errorf("reading the other side's hello: %w", err)
	}
	switch string(buf) {
	case helloNone:
		if len(fds) == 0 {
			return nil, nil
		}
	case helloNS:
		if len(fds) == 1 {
			unix.CloseOnExec(fds[0])
			return os.NewFile(uintptr(fds[0]), "handed network namespace"), nil
		}
	}
	closeAll()
	return nil, fmt.Errorf("the other side's hello %q with %d descriptors is not vwire's", buf, len(fds))
}

// handedConn closes the handed namespace with the connection.
type handedConn struct {
	*net.UnixConn
	ns *os.File
}

func (c *handedConn) Close() error {
	if c.ns != nil {
		c.ns.Close()
	}
	return c.UnixConn.Close()
}

func (h *handing) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "vwire-unix"}
}
func (h *handing) Clone() credentials.TransportCredentials { c := *h; return &c }
func (h *handing) OverrideServerName(string) error         { return nil }

// OwnNamespace opens the caller's network namespace, to hand it.
func OwnNamespace() (*os.File, error) {
	f, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("opening this process's network namespace: %w", err)
	}
	return f, nil
}

// Errors of namespaces a gateway will not program.
var ErrForeignNamespace = errors.New("not a workload's network namespace")

// CheckHanded refuses a descriptor that is not a network namespace, or is
// the gateway's own or the host's (PID 1's): a workload hands its own, and
// a gateway never puts a vWire's interface into its own network.
func CheckHanded(f *os.File) error {
	t, err := unix.IoctlRetInt(int(f.Fd()), unix.NS_GET_NSTYPE)
	if err != nil || t != unix.CLONE_NEWNET {
		return fmt.Errorf("%w: the descriptor handed over is not a network namespace", ErrForeignNamespace)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	return notOwn(st, "the namespace handed over")
}

// CheckPath refuses a namespace named by a path, or a name in /run/netns,
// that cannot be opened, or that is the gateway's own or the host's.
func CheckPath(ns string) error {
	path := ns
	if !strings.Contains(ns, "/") {
		path = filepath.Join("/run/netns", ns)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fmt.Errorf("network namespace %q does not exist or cannot be opened (%v)", ns, err)
	}
	return notOwn(st, fmt.Sprintf("network namespace %q", ns))
}

// ownNS is the gateway's network namespace, read as the process starts:
// later /proc/self/ns/net is the main thread's, which the Go runtime lends
// to goroutines that enter a workload's namespace for a moment (kernel.Do)
// — read then, a workload's namespace was "the gateway's own".
var ownNS, ownNSErr = stat("/proc/thread-self/ns/net")

func stat(path string) (st unix.Stat_t, err error) {
	err = unix.Stat(path, &st)
	return st, err
}

func notOwn(st unix.Stat_t, what string) error {
	host, hostErr := stat("/proc/1/ns/net")
	for _, o := range []struct {
		st    unix.Stat_t
		err   error
		whose string
	}{{ownNS, ownNSErr, "the gateway's own"}, {host, hostErr, "the host's (PID 1's)"}} {
		if o.err == nil && o.st.Dev == st.Dev && o.st.Ino == st.Ino {
			return fmt.Errorf("%w: %s is %s network namespace; a vWire's interface goes into the workload's (run vwire connect or vwire endpoint inside it, or give --netns)",
				ErrForeignNamespace, what, o.whose)
		}
	}
	return nil
}

// Pins keeps handed namespaces at paths in Dir, as `ip netns add` keeps
// named ones (a bind mount of the namespace file): the rest of the data
// plane names them by path, and on a host they outlive a gateway restart.
type Pins struct{ Dir string }

// Pin mounts ns at Dir/name, replacing what was there, and returns the
// path.
func (p Pins) Pin(ns *os.File, name string) (string, error) {
	if name == "" || strings.ContainsAny(name, "/ ") {
		return "", fmt.Errorf("pin name %q: empty or has '/' or ' '", name)
	}
	if err := os.MkdirAll(p.Dir, 0o700); err != nil {
		return "", err
	}
	path := filepath.Join(p.Dir, name)
	p.Unpin(path)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o400)
	if err != nil {
		return "", fmt.Errorf("pinning the handed namespace: %w", err)
	}
	f.Close()
	src := fmt.Sprintf("/proc/self/fd/%d", ns.Fd())
	if err := unix.Mount(src, path, "", unix.MS_BIND, ""); err != nil {
		os.Remove(path)
		return "", fmt.Errorf("pinning the handed namespace at %s (the gateway needs CAP_SYS_ADMIN): %w", path, err)
	}
	return path, nil
}

// Unpin undoes Pin; a missing pin is fine.
func (p Pins) Unpin(path string) {
	unix.Unmount(path, unix.MNT_DETACH)
	os.Remove(path)
}

// Live reports whether the pin at path still holds a namespace: a gateway
// restarted in a new container finds its pins' files, but not their
// mounts.
func (p Pins) Live(path string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(path, &fs) == nil && fs.Type == unix.NSFS_MAGIC
}

// Pinned reports whether path is one of these pins.
func (p Pins) Pinned(path string) bool {
	return p.Dir != "" && filepath.Dir(path) == filepath.Clean(p.Dir)
}

// List returns the pins' paths.
func (p Pins) List() []string {
	entries, _ := os.ReadDir(p.Dir)
	out := make([]string, 0, len(entries))
	for _, e := range entries {
		out = append(out, filepath.Join(p.Dir, e.Name()))
	}
	return out
}
