package handover

import (
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/vwire/vwire/e2e"
)

// The main goroutine keeps the main thread (the one /proc/self names),
// and TestMain lends it to the tests through onMain.
func init() { runtime.LockOSThread() }

var onMain = make(chan func())

func TestMain(m *testing.M) {
	done := make(chan int)
	go func() { done <- m.Run() }()
	for {
		select {
		case f := <-onMain:
			f()
		case code := <-done:
			os.Exit(code)
		}
	}
}

// A workload's namespace is a workload's while the process's main thread
// is inside it: the Go runtime lends that thread to goroutines that enter
// a workload's namespace for a moment (kernel.Do), and the check once
// read the gateway's namespace from it (/proc/self) and refused a
// workload's as "the gateway's own" (eight clients' set-ups met it).
func TestCheckWhileTheMainThreadIsElsewhere(t *testing.T) {
	e2e.RequireRoot(t)
	name, ns := namespace(t)
	entered, leave := make(chan error), make(chan struct{})
	onMain <- func() {
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err == nil {
			defer orig.Close()
			err = unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET)
		}
		entered <- err
		<-leave
		if err == nil {
			if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
				panic("the main thread cannot go back to its namespace: " + err.Error())
			}
		}
	}
	if err := <-entered; err != nil {
		t.Fatal(err)
	}
	errPath, errHanded := CheckPath(name), CheckHanded(ns)
	close(leave)
	if errPath != nil || errHanded != nil {
		t.Errorf("a workload's namespace, while the main thread is in it: by name %v, handed %v", errPath, errHanded)
	}
}
