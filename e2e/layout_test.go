package e2e

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

type pkg struct {
	ImportPath string
	Doc        string
	Deps       []string
	Module     *struct{ Path string }
}

func listPackages(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", "-deps=false", "github.com/vwire/vwire/...")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) < 5 {
		t.Fatalf("go list found only %d packages", len(pkgs))
	}
	return pkgs
}

// Every package says what it is for.
func TestEveryPackageHasADocComment(t *testing.T) {
	for _, p := range listPackages(t) {
		if strings.TrimSpace(p.Doc) == "" {
			t.Errorf("%s has no package doc comment", p.ImportPath)
		}
	}
}

// The control plane stays free of the data plane's libraries: only
// gateway/vpp may import govpp, only the gateway netlink.
func TestControlPlaneDependencies(t *testing.T) {
	sawEtcd := false
	defer func() {
		if !sawEtcd {
			t.Error("go list reported no dependencies: the check is blind")
		}
	}()
	forbidden := []string{"go.fd.io/govpp", "github.com/vishvananda/netlink", "golang.zx2c4.com/wireguard"}
	for _, p := range listPackages(t) {
		if !strings.Contains(p.ImportPath, "/registry") && !strings.Contains(p.ImportPath, "/proxy") && !strings.Contains(p.ImportPath, "/federation") {
			continue
		}
		for _, d := range p.Deps {
			sawEtcd = sawEtcd || d == "go.etcd.io/etcd/client/v3"
			for _, f := range forbidden {
				if strings.HasPrefix(d, f) {
					t.Errorf("%s depends on %s", p.ImportPath, d)
				}
			}
		}
	}
}
