package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

// The file has the new contents and mode, and no temporary file is left.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	for _, data := range []string{"old", "new"} {
		if err := Write(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	fi, _ := os.Stat(path)
	if err != nil || string(b) != "new" || fi.Mode().Perm() != 0o600 {
		t.Errorf("%q %v %v", b, fi.Mode(), err)
	}
	if left, _ := os.ReadDir(dir); len(left) != 1 {
		t.Errorf("files left: %v", left)
	}
	if err := Write(filepath.Join(dir, "no-such-dir", "x"), nil, 0o600); err == nil {
		t.Error("writing into a missing directory succeeded")
	}
}
