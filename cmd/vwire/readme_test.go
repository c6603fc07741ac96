package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// The README's quick start, run as written (with this test's address and
// directories), so that it cannot go stale: every command succeeds, and a
// line that ends in "# X" prints X.
func TestREADMEQuickStart(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	block := quickStart(string(readme))
	if block == nil {
		t.Fatal("the README has no quick-start block starting with C=\"--registry ...\"")
	}
	if first := firstBlock(string(readme)); len(first) != 2 || !strings.HasPrefix(first[0], "make demo ") || !strings.HasPrefix(first[1], "make test ") {
		t.Errorf("the README's first commands are %q, want make demo and make test", first)
	}
	if mk, _ := os.ReadFile("../../Makefile"); !strings.Contains(string(mk), "demo: build\n\t./$(BIN)/vwire demo\n") {
		t.Error("make demo no longer runs vwire demo (e2e/netns's TestDemo runs that); keep the README in step")
	}
	if !strings.Contains(string(readme), "make run     # builds vwire and runs one domain: vwire domain --name a.example --data-dir ./data-a --listen 127.0.0.1:7001") {
		t.Error("the README's first command no longer says what make run does; keep this test in step")
	}
	dir, addr := t.TempDir(), freeAddr(t)
	startVwire(t, nil, "domain", "--name", "a.example", "--data-dir", filepath.Join(dir, "data-a"), "--listen", addr)
	repo, _ := filepath.Abs("../..")
	rewrite := strings.NewReplacer("127.0.0.1:7001", addr, "./data-a", filepath.Join(dir, "data-a"), "./bin/vwire", vwireBin)
	prelude := rewrite.Replace(block[0])
	for _, line := range block[1:] {
		cmdline, want, _ := strings.Cut(line, "#")
		cmd := exec.Command("bash", "-ec", prelude+"\n"+rewrite.Replace(cmdline))
		cmd.Dir = repo
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("README line %q: %v\n%s", line, err, out)
		}
		if want = strings.TrimSpace(want); want != "" && !strings.Contains(string(out), want) {
			t.Errorf("README line %q prints\n%s\nwithout %q", line, out, want)
		}
	}
}

// firstBlock is the README's first sh block.
func firstBlock(readme string) []string {
	_, rest, _ := strings.Cut(readme, "```sh\n")
	block, _, _ := strings.Cut(rest, "```")
	return strings.Split(strings.TrimSpace(block), "\n")
}

// quickStart is the README's sh block that starts with C="--registry.
func quickStart(readme string) []string {
	var block []string
	inBlock := false
	for _, line := range strings.Split(readme, "\n") {
		switch {
		case strings.HasPrefix(line, "```sh") && !inBlock:
			inBlock, block = true, nil
		case line == "```" && inBlock:
			inBlock = false
			if len(block) > 0 && strings.HasPrefix(block[0], `C="--registry`) {
				return block
			}
		case inBlock:
			block = append(block, line)
		}
	}
	return nil
}

// docs/configuration.md's whole `vwire domain` file names every flag of
// `vwire domain`, and vwire domain starts from it.
func TestDocumentedDomainFile(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(doc), "A whole `vwire domain` file")
	_, rest, ok2 := strings.Cut(rest, "```yaml\n")
	file, _, ok3 := strings.Cut(rest, "```")
	if !ok || !ok2 || !ok3 {
		t.Fatal("docs/configuration.md has no whole vwire domain file")
	}
	newDomainCmd().Flags().VisitAll(func(f *pflag.Flag) {
		if f.Name != "config" && !strings.Contains(file, "\n"+f.Name+":") && !strings.HasPrefix(file, f.Name+":") {
			t.Errorf("the documented file lacks %s", f.Name)
		}
	})
	path := filepath.Join(t.TempDir(), "domain.yaml")
	os.WriteFile(path, []byte(file), 0o600)
	// The command line wins over the file: a test's own directory and port.
	ready := startVwire(t, nil, "domain", "--config", path, "--data-dir", filepath.Join(t.TempDir(), "d"), "--listen", freeAddr(t), "--dataplane", "none")
	if !strings.Contains(ready, "vwire domain dc.marsha.example ready") {
		t.Errorf("ready line %q", ready)
	}
}
