// Package atomicfile writes a file so that a reader, or a process that
// starts after a crash, sees the old contents or the new, never half.
package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
)

// Write writes data to path with mode through a synced temporary file in
// the same directory and a rename, then syncs the directory (without it a
// crash may lose the rename: the old contents come back).
func Write(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // gone already after the rename
	_, err = tmp.Write(data)
	err = errors.Join(err, tmp.Chmod(mode), tmp.Sync(), tmp.Close())
	if err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return SyncDir(filepath.Dir(path))
}

// SyncDir makes the renames and removals in dir durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	return errors.Join(d.Sync(), d.Close())
}

// Batch writes a whole-state file for changes made at the same moment at
// once: each change takes a number (Changed, under the owner's lock, with
// the change), and Save returns once a write that includes it is durable.
// Callers that arrive while a write is under way share the next one, so
// a burst of changes costs two writes and fsyncs, not one each.
type Batch struct {
	path     string
	mode     os.FileMode
	snapshot func() ([]byte, error) // the state, marshalled under the owner's lock

	changes atomic.Uint64
	writing sync.Mutex
	saved   uint64 // the changes the file holds; under writing
}

// NewBatch writes path with mode, its contents from snapshot.
func NewBatch(path string, mode os.FileMode, snapshot func() ([]byte, error)) *Batch {
	return &Batch{path: path, mode: mode, snapshot: snapshot}
}

// Changed numbers a change; call it under the lock the change was made
// under.
func (b *Batch) Changed() uint64 { return b.changes.Add(1) }

// Save makes change n durable, with every change before it: at once if a
// write since has included it, else with the next write.
func (b *Batch) Save(n uint64) error {
	b.writing.Lock()
	defer b.writing.Unlock()
	if b.saved >= n {
		return nil
	}
	upTo := b.changes.Load() // the snapshot holds at least these
	data, err := b.snapshot()
	if err == nil {
		err = Write(b.path, data, b.mode)
	}
	if err != nil {
		return err
	}
	b.saved = upTo
	return nil
}
