// Command pause is the process that holds a pod's namespaces on vwire's
// kind nodes (containerd's sandbox image), built here because this
// machine has no image registry to pull registry.k8s.io/pause from. It
// sleeps until told to stop and, as PID 1 of the pod, reaps the orphans
// the pod's containers leave.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	children := make(chan os.Signal, 1)
	signal.Notify(children, syscall.SIGCHLD)
	for {
		select {
		case <-stop:
			os.Exit(0)
		case <-children:
			for {
				var ws syscall.WaitStatus
				if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}
