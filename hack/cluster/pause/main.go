// Command pause is the sandbox ("pause") container of the local cluster: it holds the pod's namespaces
// and exits on SIGTERM/SIGINT. Built static so the image is a single file.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
