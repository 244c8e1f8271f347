// Command testbox is the one-file image the cluster harness tests run (localhost/fto-testbox): it needs no
// base image, so `up` imports it in a fraction of a second.
//
//	testbox sleep [SECONDS]   wait for SIGTERM (exit 0) or the timeout (default: forever)
//	testbox hog MIB           allocate and touch MIB MiB, then wait: over the memory limit -> OOMKilled
//	testbox write PATH TEXT   write TEXT to PATH (fsync), print uid/gid, exit 0
//	testbox incluster         GET /api through in-cluster config (KUBERNETES_SERVICE_HOST + the SA token)
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func main() {
	if len(os.Args) < 2 {
		fail("usage: testbox sleep|hog|write|incluster ...")
	}
	switch os.Args[1] {
	case "sleep":
		wait(arg(2, 0))
	case "hog":
		hog(arg(2, 64))
	case "write":
		if len(os.Args) < 4 {
			fail("usage: testbox write PATH TEXT")
		}
		write(os.Args[2], os.Args[3])
	case "incluster":
		incluster()
	default:
		fail("unknown command " + os.Args[1])
	}
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "testbox:", msg)
	os.Exit(2)
}

func arg(i, def int) int {
	if len(os.Args) <= i {
		return def
	}
	n, err := strconv.Atoi(os.Args[i])
	if err != nil {
		fail("not a number: " + os.Args[i])
	}
	return n
}

// wait returns (exit 0) on SIGTERM/SIGINT, or after secs seconds when secs > 0.
func wait(secs int) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	fmt.Println("testbox: waiting")
	var timeout <-chan time.Time
	if secs > 0 {
		timeout = time.After(time.Duration(secs) * time.Second)
	}
	select {
	case s := <-sig:
		fmt.Println("testbox: got", s)
	case <-timeout:
		fmt.Println("testbox: timeout")
	}
}

// hog touches every page so the memory is really charged to the container's cgroup.
func hog(mib int) {
	var chunks [][]byte
	for i := 0; i < mib; i++ {
		b := make([]byte, 1<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = 1
		}
		chunks = append(chunks, b)
		if (i+1)%16 == 0 {
			fmt.Printf("testbox: %d MiB\n", i+1)
		}
	}
	fmt.Printf("testbox: holding %d MiB\n", len(chunks))
	wait(0)
}

func write(path, text string) {
	f, err := os.Create(path)
	if err != nil {
		fail(err.Error())
	}
	if _, err := f.WriteString(text); err != nil {
		fail(err.Error())
	}
	if err := f.Sync(); err != nil {
		fail(err.Error())
	}
	f.Close()
	fmt.Printf("testbox: wrote %s as uid=%d gid=%d\n", path, os.Getuid(), os.Getgid())
}

// incluster does what client libraries' in-cluster config does: service host/port from the environment,
// the CA and token from the projected service-account volume.
func incluster() {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		fail("KUBERNETES_SERVICE_HOST/PORT not set")
	}
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		fail(err.Error())
	}
	ca, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		fail(err.Error())
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		fail("no certificate in ca.crt")
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	req, _ := http.NewRequest("GET", "https://"+net.JoinHostPort(host, port)+"/api", nil)
	req.Header.Set("Authorization", "Bearer "+string(token))
	resp, err := client.Do(req)
	if err != nil {
		fail(err.Error())
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Printf("testbox: GET https://%s/api -> %d %s\n", net.JoinHostPort(host, port), resp.StatusCode, body)
	if resp.StatusCode != 200 {
		os.Exit(1)
	}
}
