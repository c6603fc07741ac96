package atomicfile

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func openJournal(t *testing.T, path string) (*Journal, map[string]string) {
	t.Helper()
	j, values, err := OpenJournal(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	out := map[string]string{}
	for k, v := range values {
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			t.Fatalf("key %s: %s: %v", k, v, err)
		}
		out[k] = s
	}
	return j, out
}

func put(t *testing.T, j *Journal, k, v string) {
	t.Helper()
	n, err := j.Put(k, v)
	if err == nil {
		err = j.Save(n)
	}
	if err != nil {
		t.Fatal(err)
	}
}

func lines(t *testing.T, path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

// What was saved is what the next open reads: values put last, keys
// deleted gone, with the file's mode.
func TestJournalKeeps(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "ends.json")
	j, _ := openJournal(t, path)
	put(t, j, "a", "1")
	put(t, j, "b", "2")
	put(t, j, "a", "3")
	if err := j.Save(j.Delete("b")); err != nil {
		t.Fatal(err)
	}
	put(t, j, "c", "4")
	j.Close()
	_, got := openJournal(t, path)
	if fmt.Sprint(got) != "map[a:3 c:4]" {
		t.Errorf("after reopening: %v, want map[a:3 c:4]", got)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, %v", fi.Mode(), err)
	}
	// Appended, not rewritten: a header and a line a change.
	if n := lines(t, path); n != 6 {
		t.Errorf("%d lines after 5 changes, want 6 (header and one a change)", n)
	}
}

// Changes made while a write is under way share the next write, and each
// Save returns only once its change is in the file.
func TestJournalConcurrent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	j, _ := openJournal(t, path)
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := j.Put(fmt.Sprint(i), fmt.Sprint(i))
			if err == nil {
				err = j.Save(n)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	_, got := openJournal(t, path)
	if len(got) != n {
		t.Errorf("%d keys after %d concurrent puts", len(got), n)
	}
	for k, v := range got {
		if k != v {
			t.Errorf("key %s holds %s", k, v)
		}
	}
}

// However often a key changes, the file stays bounded by the live keys:
// it is rewritten once the lines far outnumber them.
func TestJournalCompacts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	j, _ := openJournal(t, path)
	put(t, j, "kept", "x")
	for i := range 3 * compactAfter {
		put(t, j, "busy", fmt.Sprint(i))
		if i%2 == 0 {
			if err := j.Save(j.Delete("gone")); err != nil {
				t.Fatal(err)
			}
		} else {
			put(t, j, "gone", "y")
		}
	}
	if n := lines(t, path); n > 2*2+compactAfter+2 {
		t.Errorf("%d lines for 2 live keys", n)
	}
	j.Close()
	_, got := openJournal(t, path)
	if want := fmt.Sprintf("map[busy:%d gone:y kept:x]", 3*compactAfter-1); fmt.Sprint(got) != want {
		t.Errorf("after compactions: %v, want %s", got, want)
	}
}

// A crash while a line was written leaves it cut short: it was never
// acknowledged and is dropped; a damaged line before the last is an error
// that names it.
func TestJournalDamage(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	j, _ := openJournal(t, path)
	put(t, j, "a", "1")
	put(t, j, "b", "2")
	j.Close()
	good, _ := os.ReadFile(path)

	os.WriteFile(path, append(append([]byte{}, good...), `{"k":"c","v":"3`...), 0o600)
	j, got := openJournal(t, path)
	if fmt.Sprint(got) != "map[a:1 b:2]" {
		t.Errorf("with a last line cut short: %v", got)
	}
	put(t, j, "d", "4") // the first write puts the file right
	j.Close()
	if _, got := openJournal(t, path); fmt.Sprint(got) != "map[a:1 b:2 d:4]" {
		t.Errorf("after a write: %v", got)
	}

	bad := strings.Replace(string(good), `{"k":"a"`, `{"k":"a",`, 1)
	os.WriteFile(path, []byte(bad), 0o600)
	if _, _, err := OpenJournal(path, 0o600, nil); err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("a damaged line 2: %v", err)
	}
	os.WriteFile(path, []byte(`[{"ID":"a"}]`), 0o600)
	if _, _, err := OpenJournal(path, 0o600, nil); err == nil || !strings.Contains(err.Error(), "not a vwire journal") {
		t.Errorf("another format with no reader for it: %v", err)
	}
}

// A file of the format before is read by its reader, and becomes a
// journal with the first change.
func TestJournalLegacy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state")
	os.WriteFile(path, []byte(`{"a":"1","b":"2"}`), 0o600)
	legacy := func(b []byte) (map[string]json.RawMessage, error) {
		var m map[string]json.RawMessage
		return m, json.Unmarshal(b, &m)
	}
	j, values, err := OpenJournal(path, 0o600, legacy)
	if err != nil || len(values) != 2 {
		t.Fatalf("%v %v", values, err)
	}
	put(t, j, "c", "3")
	j.Close()
	if _, got := openJournal(t, path); fmt.Sprint(got) != "map[a:1 b:2 c:3]" {
		t.Errorf("after the first change: %v", got)
	}
	os.WriteFile(path, []byte(`{"a":`), 0o600)
	if _, _, err := OpenJournal(path, 0o600, legacy); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("a damaged file of before: %v", err)
	}
}

// A write that fails is an error, and the next write puts every change
// in the file, the failed one's too.
func TestJournalWriteFails(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state")
	j, _ := openJournal(t, path)
	put(t, j, "a", "1")
	j.f.Close() // the file goes bad under the journal
	n, _ := j.Put("b", "2")
	if err := j.Save(n); err == nil {
		t.Fatal("a write into a closed file succeeded")
	}
	put(t, j, "c", "3")
	j.Close()
	if _, got := openJournal(t, path); fmt.Sprint(got) != "map[a:1 b:2 c:3]" {
		t.Errorf("after a failed write and another: %v", got)
	}
}
