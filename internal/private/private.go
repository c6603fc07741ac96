// Package private checks that files of secrets (keys, the etcd data) and
// the directories that hold them are its owner's alone: 0600 files, 0700
// directories, as vwire writes them. A secret others can read is refused
// at start-up with what to do, not used.
package private

import (
	"fmt"
	"os"
)

// Check says why path is not its owner's alone: any permission for its
// group or others. A missing path is the caller's to judge (os.Stat's
// error).
func Check(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		want := os.FileMode(0o600)
		if fi.IsDir() {
			want = 0o700
		}
		return fmt.Errorf("%s holds secrets but is open to others than its owner (mode %#o): refused; chmod %#o %s", path, perm, want, path)
	}
	return nil
}

// MkdirAll makes dir (and its parents) as os.MkdirAll does with mode 0700,
// and checks that dir is its owner's alone.
func MkdirAll(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return Check(dir)
}
