package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
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

// Changes made while a write is under way share the next write, and each
// Save returns only once its change is in the file.
func TestBatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	const n = 50
	var (
		mu      sync.Mutex
		state   []string
		writes  atomic.Int32
		allIn   = make(chan struct{})
		changed sync.WaitGroup
	)
	b := NewBatch(path, 0o600, func() ([]byte, error) {
		if writes.Add(1) == 1 {
			<-allIn // the first write holds the others back until all changed
		}
		mu.Lock()
		defer mu.Unlock()
		return []byte(strings.Join(state, ",")), nil
	})
	changed.Add(n)
	errs := make(chan error, n)
	for i := range n {
		go func() {
			mu.Lock()
			state = append(state, fmt.Sprint(i))
			c := b.Changed()
			mu.Unlock()
			changed.Done()
			errs <- b.Save(c)
		}()
	}
	changed.Wait()
	close(allIn)
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	got, _ := os.ReadFile(path)
	if len(strings.Split(string(got), ",")) != n {
		t.Errorf("the file holds %q, not all %d changes", got, n)
	}
	if w := writes.Load(); w > 2 {
		t.Errorf("%d writes for %d changes made during one: want at most 2", w, n)
	}
}
