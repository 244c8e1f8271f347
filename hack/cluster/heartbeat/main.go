// Command fto-node-heartbeat keeps a virtual second Node Ready: it creates the Node (unschedulable, with a
// NoSchedule taint, no capacity) and renews its status and Lease every few seconds, as a kubelet would.
//
// Why: when every node of a cluster is NotReady, Kubernetes assumes the control plane is cut off and stops
// tainting and evicting on purpose ("master disruption mode"). With one real node, a vanished spot node
// would be that case, not the one clouds produce. With this second, always-Ready node, the real node going
// away is an ordinary node failure: unreachable taint, then DeletionByTaintManager, as on a real cluster.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

type api struct {
	server, token string
	client        *http.Client
}

func (a *api) do(method, path, contentType string, body any) (int, string, error) {
	var r io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, "", err
		}
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, a.server+path, r)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out), nil
}

func main() {
	server := flag.String("server", "", "apiserver URL")
	tokenFile := flag.String("token-file", "", "bearer token file")
	caFile := flag.String("ca-file", "", "CA bundle of the apiserver")
	node := flag.String("node", "fto-virtual", "name of the virtual node")
	interval := flag.Duration("interval", 2*time.Second, "heartbeat interval")
	flag.Parse()

	token, err := os.ReadFile(*tokenFile)
	if err != nil {
		log.Fatal(err)
	}
	ca, err := os.ReadFile(*caFile)
	if err != nil {
		log.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	a := &api{server: *server, token: strings.TrimSpace(string(token)),
		client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(*interval)
	defer tick.Stop()
	for {
		if err := beat(a, *node, *interval); err != nil {
			log.Print(err)
		}
		select {
		case <-stop:
			return
		case <-tick.C:
		}
	}
}

func beat(a *api, node string, interval time.Duration) error {
	nodePath := "/api/v1/nodes/" + node
	if code, _, err := a.do("GET", nodePath, "", nil); err != nil {
		return err
	} else if code == http.StatusNotFound {
		n := map[string]any{
			"apiVersion": "v1", "kind": "Node",
			"metadata": map[string]any{"name": node, "labels": map[string]string{
				"kubernetes.io/hostname": node, "finetune-operator.local/virtual-node": "true"}},
			"spec": map[string]any{"unschedulable": true, "taints": []map[string]string{
				{"key": "finetune-operator.local/virtual-node", "value": "true", "effect": "NoSchedule"}}},
		}
		if code, body, err := a.do("POST", "/api/v1/nodes", "application/json", n); err != nil || (code != 201 && code != 409) {
			return fmt.Errorf("create node: %d %s %v", code, body, err)
		}
		log.Printf("created virtual node %s", node)
	}
	now := time.Now().UTC()
	status := map[string]any{"status": map[string]any{
		"capacity":    map[string]string{"cpu": "0", "memory": "0", "pods": "0"},
		"allocatable": map[string]string{"cpu": "0", "memory": "0", "pods": "0"},
		"conditions": []map[string]string{{
			"type": "Ready", "status": "True", "reason": "VirtualNodeHeartbeat",
			"message": "virtual node kept Ready by fto-node-heartbeat (hack/cluster)",
			"lastHeartbeatTime": now.Format(time.RFC3339)}},
	}}
	if code, body, err := a.do("PATCH", nodePath+"/status", "application/strategic-merge-patch+json", status); err != nil || code != 200 {
		return fmt.Errorf("patch node status: %d %s %v", code, body, err)
	}
	leasePath := "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/" + node
	renew := now.Format("2006-01-02T15:04:05.000000Z")
	code, _, err := a.do("PATCH", leasePath, "application/merge-patch+json", map[string]any{"spec": map[string]any{"renewTime": renew}})
	if err != nil {
		return err
	}
	if code == http.StatusNotFound {
		lease := map[string]any{
			"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
			"metadata": map[string]any{"name": node, "namespace": "kube-node-lease"},
			"spec": map[string]any{"holderIdentity": node, "leaseDurationSeconds": int(4 * interval / time.Second), "renewTime": renew},
		}
		if code, body, err := a.do("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", "application/json", lease); err != nil || (code != 201 && code != 409) {
			return fmt.Errorf("create lease: %d %s %v", code, body, err)
		}
	}
	return nil
}
