package atomicfile

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// journalHeader is a journal's first line; a file without it is in the
// format of before (one JSON document, rewritten whole on every change).
const journalHeader = `{"vwire-journal":1}`

// compactAfter is how many lines beyond twice the live keys a journal may
// hold before it is rewritten with one line per key.
const compactAfter = 1024

// Journal keeps a map of JSON values by key durable in a file of lines,
// one a change: a change costs a line appended and one fdatasync (shared
// by the changes of the same moment), not the whole state rewritten. Once the lines far outnumber the keys, the next write
// rewrites the file with a line per key, through a rename (a crash leaves
// the old file or the new).
type Journal struct {
	path string
	mode os.FileMode

	mu     sync.Mutex
	live   map[string][]byte // each key's line, for a rewrite
	queue  [][]byte          // lines not written yet, in the order of their changes
	queued uint64            // the changes numbered

	writing sync.Mutex
	f       *os.File // nil until the first write, or after a failed one: that write rewrites the file
	lines   int      // in the file
	saved   uint64   // the changes the file holds
}

// journalLine is one change: key's value, or (Gone) its removal.
type journalLine struct {
	Key   string          `json:"k"`
	Value json.RawMessage `json:"v,omitempty"`
	Gone  bool            `json:"gone,omitempty"`
}

// OpenJournal reads the journal at path (nothing if it does not exist)
// and returns its keys' values. A file in the format of before is read by
// legacy (nil: refused) and rewritten as a journal on the first change. A
// last line cut short (a crash during its write) is dropped; any other
// line that does not parse is an error naming it.
func OpenJournal(path string, mode os.FileMode, legacy func([]byte) (map[string]json.RawMessage, error)) (*Journal, map[string]json.RawMessage, error) {
	j := &Journal{path: path, mode: mode, live: map[string][]byte{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return j, map[string]json.RawMessage{}, nil
	}
	if err != nil {
		return nil, nil, err
	}
	values := map[string]json.RawMessage{}
	if !bytes.HasPrefix(b, []byte(journalHeader+"\n")) {
		if legacy == nil {
			return nil, nil, fmt.Errorf("%s: not a vwire journal", path)
		}
		if values, err = legacy(b); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		for k, v := range values {
			j.live[k], _ = json.Marshal(journalLine{Key: k, Value: v})
		}
		return j, values, nil // rewritten as a journal by the first write
	}
	rest := b[len(journalHeader)+1:]
	for n := 2; ; n++ {
		line, after, whole := bytes.Cut(rest, []byte("\n"))
		if !whole { // (a line cut short was never acknowledged)
			break
		}
		rest = after
		var l journalLine
		if err := json.Unmarshal(line, &l); err != nil || l.Key == "" || (l.Gone == (l.Value != nil)) {
			return nil, nil, fmt.Errorf("%s line %d: not a journal line (%q)", path, n, line)
		}
		if l.Gone {
			delete(values, l.Key)
			delete(j.live, l.Key)
		} else {
			values[l.Key] = l.Value
			j.live[l.Key] = line
		}
	}
	return j, values, nil
}

// Put numbers the change that makes v key's value; call it under the lock
// the change was made under, then Save the number outside it.
func (j *Journal) Put(key string, v any) (uint64, error) {
	value, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	line, err := json.Marshal(journalLine{Key: key, Value: value})
	if err != nil {
		return 0, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	j.live[key] = line
	return j.enqueueLocked(line), nil
}

// Delete numbers the change that removes key (see Put).
func (j *Journal) Delete(key string) uint64 {
	line, _ := json.Marshal(journalLine{Key: key, Gone: true})
	j.mu.Lock()
	defer j.mu.Unlock()
	delete(j.live, key)
	return j.enqueueLocked(line)
}

func (j *Journal) enqueueLocked(line []byte) uint64 {
	j.queue = append(j.queue, line)
	j.queued++
	return j.queued
}

// Save makes change n durable, with every change before it: at once if a
// write since has included it, else with the next write.
func (j *Journal) Save(n uint64) error {
	j.writing.Lock()
	defer j.writing.Unlock()
	if j.saved >= n {
		return nil
	}
	j.mu.Lock()
	queue, upTo := j.queue, j.queued
	j.queue = nil
	var whole [][]byte
	if j.f == nil || j.lines+len(queue) > 2*len(j.live)+compactAfter {
		whole = make([][]byte, 0, len(j.live))
		for _, l := range j.live { // every change so far, the queue's too
			whole = append(whole, l)
		}
	}
	j.mu.Unlock()
	var err error
	if whole != nil {
		err = j.rewrite(whole)
	} else {
		err = j.append(queue)
	}
	if err != nil {
		// What the file holds is unknown: the next write rewrites it.
		if j.f != nil {
			j.f.Close()
			j.f = nil
		}
		return err
	}
	j.saved = upTo
	return nil
}

// append writes lines at the journal's end and waits for the disk.
func (j *Journal) append(lines [][]byte) error {
	var buf bytes.Buffer
	for _, l := range lines {
		buf.Write(l)
		buf.WriteByte('\n')
	}
	if _, err := j.f.Write(buf.Bytes()); err != nil {
		return err
	}
	if err := unix.Fdatasync(int(j.f.Fd())); err != nil {
		return err
	}
	j.lines += len(lines)
	return nil
}

// rewrite replaces the journal with lines (a line per live key) and opens
// it for appending.
func (j *Journal) rewrite(lines [][]byte) error {
	var buf bytes.Buffer
	buf.WriteString(journalHeader + "\n")
	for _, l := range lines {
		buf.Write(l)
		buf.WriteByte('\n')
	}
	if j.f != nil {
		j.f.Close()
		j.f = nil
	}
	if err := os.MkdirAll(filepath.Dir(j.path), 0o700); err != nil {
		return err
	}
	if err := Write(j.path, buf.Bytes(), j.mode); err != nil {
		return err
	}
	f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	j.f, j.lines = f, len(lines)
	return nil
}

// Close closes the journal's file; what was saved stays.
func (j *Journal) Close() error {
	j.writing.Lock()
	defer j.writing.Unlock()
	if j.f == nil {
		return nil
	}
	err := j.f.Close()
	j.f = nil
	return err
}
