// Package crashpoint names the instants at which a crash would leave state
// on disk between two writes, so that a test can stop a process exactly
// there and check that it starts again. In a running program it does
// nothing.
package crashpoint

import "sync/atomic"

var hook atomic.Pointer[func(string)]

// Here marks the instant name; the hook a test set runs there.
func Here(name string) {
	if h := hook.Load(); h != nil {
		(*h)(name)
	}
}

// Set has f run at every Here until the returned func is called.
func Set(f func(name string)) (restore func()) {
	hook.Store(&f)
	return func() { hook.Store(nil) }
}

// Crash is what a hook panics with to stop at an instant.
type Crash struct{ At string }

// At returns a hook that panics with Crash at the instant name.
func At(name string) func(string) {
	return func(at string) {
		if at == name {
			panic(Crash{At: at})
		}
	}
}

// Run runs f and reports whether it stopped at a Crash.
func Run(f func()) (crashed bool) {
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(Crash); !ok {
				panic(r)
			}
			crashed = true
		}
	}()
	f()
	return false
}
