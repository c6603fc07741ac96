package e2e

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// buildVwire builds the vwire binary into dir.
func buildVwire(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "vwire")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/vwire/vwire/cmd/vwire").CombinedOutput(); err != nil {
		t.Fatalf("building vwire: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startDomainProcess runs `vwire args...` (a server role) until the test
// ends, logging its output, and waits for its ready line. It returns the
// process, for tests that kill it.
func startDomainProcess(t *testing.T, bin string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	name := args[0]
	for i, a := range args {
		if a == "--name" && i+1 < len(args) {
			name += " " + args[i+1]
		}
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			t.Logf("vwire %s: %s", name, sc.Text())
			if strings.Contains(sc.Text(), " ready in ") {
				close(ready)
			}
		}
	}()
	t.Cleanup(func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() })
	select {
	case <-ready:
	case <-time.After(60 * time.Second):
		t.Fatalf("vwire %s not ready in 60s", name)
	}
	return cmd
}
