package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// toolPath finds a real component built by `make tools`. Missing, it fails
// the test under CI=true and skips it elsewhere, naming what to run.
func toolPath(t *testing.T, name string) string {
	t.Helper()
	dir := os.Getenv("VWIRE_TOOLS_BIN")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "vwire", "tools")
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		msg := fmt.Sprintf("%s is missing (%v): run `make tools`", p, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

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
