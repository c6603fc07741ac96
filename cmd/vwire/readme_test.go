package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
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
