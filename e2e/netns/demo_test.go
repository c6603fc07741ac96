package netns

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vwire/vwire/e2e"
)

// `vwire demo` as a user runs it: all three clients reach the DC's
// service over WireGuard, the two endpoints share the clients, and it
// leaves no namespace, process, file or WireGuard socket behind — also
// when it is kept running and stopped with Ctrl-C.
func TestDemo(t *testing.T) {
	e2e.RequireRoot(t)
	before := wireguardSockets()

	out, prefix := demo(t, nil)
	if !strings.Contains(out, "PASS: 3 of 3 clients reached marshas-app-connectivity@dc.marsha.example") {
		t.Errorf("no pass line:\n%s", out)
	}
	rows := regexp.MustCompile(`(?m)^(public-k8s|private-k8s|vim)\.marsha\.example +nsm0 (\S+) +(marsha-app-\d)@dc\.marsha\.example +gateway\.\S+ > proxy\.\S+ > proxy\.dc\.marsha\.example > gateway\.dc-node1 +wireguard, MTU 1440 +\S+$`).FindAllStringSubmatch(out, -1)
	if len(rows) != 3 {
		t.Fatalf("want a row per client with its address, endpoint, path and tunnel:\n%s", out)
	}
	addrs, eps := map[string]bool{}, map[string]bool{}
	for _, r := range rows {
		addrs[r[2]], eps[r[3]] = true, true
	}
	if len(addrs) != 3 || len(eps) != 2 {
		t.Errorf("clients share addresses or one endpoint took them all: %v", rows)
	}
	assertGone(t, out, prefix, before)

	// --keep: it stays until Ctrl-C; its look-around commands work.
	var ping []string
	out, prefix = demo(t, func(line string, p *os.Process) {
		if f := strings.Fields(line); len(f) == 6 && f[4] == "ping" && ping == nil {
			ping = append(f[:5:5], "-c", "1", "-W", "2", f[5])
		}
		if strings.HasPrefix(line, "Running until Ctrl-C") {
			go func() {
				time.Sleep(500 * time.Millisecond) // the look-around lines follow
				if ping == nil {
					t.Error("--keep printed no ping command to try")
				} else if b, err := exec.Command(ping[0], ping[1:]...).CombinedOutput(); err != nil {
					t.Errorf("%v while the demo runs: %v\n%s", ping, err, b)
				}
				p.Signal(os.Interrupt)
			}()
		}
	}, "--keep")
	if !strings.Contains(out, "stopping: closing the vWires") {
		t.Errorf("--keep did not stop on Ctrl-C as it says:\n%s", out)
	}
	assertGone(t, out, prefix, before)
}

// A user who is not root is told so, before anything is made.
func TestDemoNeedsRoot(t *testing.T) {
	e2e.RequireRoot(t)
	dir, err := os.MkdirTemp("", "vwire-nobody-") // t.TempDir's parent is root's alone
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "vwire")
	b, err := os.ReadFile(vwireBin)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(bin, b, 0o755)
	cmd := exec.Command(bin, "demo", "--prefix", "vdroot-")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "vwire demo needs root") {
		t.Errorf("as nobody: %v\n%s", err, out)
	}
}

// demo runs `vwire demo` with a unique namespace prefix, passing each line
// it prints to watch, and returns its output once it exits (successfully).
func demo(t *testing.T, watch func(string, *os.Process), args ...string) (string, string) {
	b := make([]byte, 3)
	rand.Read(b)
	prefix := "vd" + hex.EncodeToString(b) + "-"
	cmd := exec.Command(vwireBin, append([]string{"demo", "--prefix", prefix}, args...)...)
	pipe, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	timer := time.AfterFunc(3*time.Minute, func() { cmd.Process.Signal(os.Interrupt) })
	defer timer.Stop()
	var out strings.Builder
	sc := bufio.NewScanner(pipe)
	for sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		if watch != nil {
			watch(sc.Text(), cmd.Process)
		}
	}
	if err := cmd.Wait(); err != nil {
		t.Errorf("vwire demo %v: %v\n%s", args, err, out.String())
	}
	t.Logf("vwire demo %v:\n%s", args, out.String())
	return out.String(), prefix
}

// assertGone checks that a finished demo left nothing behind.
func assertGone(t *testing.T, out, prefix string, sockets []string) {
	t.Helper()
	if ns := run(t, "ip", "netns", "list"); strings.Contains(ns, prefix) {
		t.Errorf("namespaces left behind:\n%s", ns)
	}
	m := regexp.MustCompile(`files in (\S+)\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("the demo did not say where its files are:\n%s", out)
	}
	if _, err := os.Stat(m[1]); err == nil {
		t.Errorf("%s left behind", m[1])
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, _ := os.ReadFile(p); strings.Contains(string(b), m[1]) || strings.Contains(string(b), prefix) {
			t.Errorf("process left behind: %s", strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	// Tests of other packages make and remove their own devices meanwhile
	// (named as a gateway's): only a socket that was not there before and
	// that nobody answers on (its process gone) counts.
	for _, s := range wireguardSockets() {
		if !slices.Contains(sockets, s) && gatewayDevice.MatchString(filepath.Base(s)) {
			if c, err := net.Dial("unix", s); err == nil {
				c.Close()
				continue
			}
			t.Errorf("WireGuard socket %s left behind (before: %v)", s, sockets)
		}
	}
}

// gatewayDevice is how a gateway names its WireGuard devices' sockets.
var gatewayDevice = regexp.MustCompile(`^wg[0-9a-f]{12}\.sock$`)

func wireguardSockets() []string {
	s, _ := filepath.Glob("/var/run/wireguard/*.sock")
	return s
}
