// Package atomicfile writes a file so that a reader, or a process that
// starts after a crash, sees the old contents or the new, never half.
package atomicfile

import (
	"errors"
	"os"
	"path/filepath"
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
