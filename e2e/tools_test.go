package e2e

import (
	"net"
	"os/exec"
	"path/filepath"
	"testing"
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
