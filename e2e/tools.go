package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// ToolPath finds a real component that `make tools` builds (etcd,
// spire-server, spire-agent) in $VWIRE_TOOLS_BIN (default
// ~/.cache/vwire/tools). Missing, it fails the test under CI=true and skips
// it elsewhere, naming what to run.
func ToolPath(t testing.TB, name string) string {
	t.Helper()
	dir := os.Getenv("VWIRE_TOOLS_BIN")
	if dir == "" {
		home, _ := os.UserHomeDir()
		dir = filepath.Join(home, ".cache", "vwire", "tools")
	}
	p := filepath.Join(dir, name)
	if _, err := os.Stat(p); err != nil {
		msg := fmt.Sprintf("%s is missing (%v): run `make tools` (make test runs it)", p, err)
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	return p
}

// RequireRoot fails the test under CI=true, and skips it elsewhere, when it
// cannot build network namespaces (root, iproute2's ip, /dev/net/tun) or
// lacks one of tools; the message names what is missing.
func RequireRoot(t testing.TB, tools ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		missing = append(missing, "/dev/net/tun")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	need(t, missing, "network namespaces, TUN, and the tools it runs in them")
}

// RequireTools fails the test under CI=true, and skips it elsewhere, when
// one of the programs it runs (from Debian's packages, which .ci/run
// installs) is missing.
func RequireTools(t testing.TB, tools ...string) {
	t.Helper()
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	need(t, missing, "apt-get install them; .ci/run does")
}

// need fails (CI) or skips the test if anything is missing, saying why.
func need(t testing.TB, missing []string, why string) {
	t.Helper()
	if len(missing) == 0 {
		return
	}
	msg := "needs " + strings.Join(missing, ", ") + " (" + why + ")"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}
