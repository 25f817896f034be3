// Command pause is the pod sandbox process of Spawner's local cluster (the role of
// registry.k8s.io/pause): it sleeps until SIGINT/SIGTERM and reaps zombies when it is PID 1.
// Built by `cargo xtask cluster up` into the image spawner.local/pause:3.10.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		switch s {
		case syscall.SIGCHLD:
			for {
				var ws syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		default:
			os.Exit(0)
		}
	}
}
