package harness

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
)

// Model is the model every node serves and every request names.
const Model = "llama3:8b"

// WarmBody is a generation request that loads Model and returns at once.
var WarmBody = []byte(`{"model":"` + Model + `","prompt":"warm","stream":false,` +
	`"options":{"num_predict":1}}`)

// FleetSpec describes the simulated nodes of a scenario.
type FleetSpec struct {
	// Nodes is the number of ollamasim processes.
	Nodes int
	// TokensPerSec paces streamed tokens, and 0 turns pacing off.
	TokensPerSec float64
	// Parallel is the number of slots per node. Requests beyond it queue in
	// the node.
	Parallel int
	// MaxQueue is the number of requests a node queues before it responds 503.
	MaxQueue int
	// ExtraArgs are added to every node's command line, such as fault flags.
	ExtraArgs []string
}

// Node is one running ollamasim process.
type Node struct {
	Name string
	// Addr is host:port, URL is http://Addr.
	Addr string
	URL  string
	Proc *Proc
}

// Fleet is the running nodes of a scenario.
type Fleet struct {
	Nodes []*Node
}

// URLs returns the base URL of every node.
func (f *Fleet) URLs() []string {
	urls := make([]string, len(f.Nodes))
	for i, n := range f.Nodes {
		urls[i] = n.URL
	}
	return urls
}

// Stop stops every node.
func (f *Fleet) Stop() {
	for _, n := range f.Nodes {
		n.Proc.Stop()
	}
}

// StartFleet starts spec.Nodes ollamasim processes and waits until each
// has loaded Model. Models never unload and a load takes no time, so no
// phase pays for one.
func StartFleet(ctx context.Context, e *Env, spec FleetSpec) (*Fleet, error) {
	f := &Fleet{}
	for i := range spec.Nodes {
		n, err := startNode(e, spec, i+1)
		if err != nil {
			f.Stop()
			return nil, err
		}
		f.Nodes = append(f.Nodes, n)
	}
	for _, n := range f.Nodes {
		if err := WaitReady(ctx, n.Proc, n.URL+"/api/generate", WarmBody); err != nil {
			f.Stop()
			return nil, fmt.Errorf("start node %s: %w", n.Name, err)
		}
	}
	return f, nil
}

func startNode(e *Env, spec FleetSpec, index int) (*Node, error) {
	addr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	name := "node" + strconv.Itoa(index)
	args := []string{
		"-addr", addr,
		"-models", Model,
		"-parallel", strconv.Itoa(spec.Parallel),
		"-max-queue", strconv.Itoa(spec.MaxQueue),
		"-load-time", "0s",
		"-keep-alive", "-1s",
		"-tokens-per-sec", strconv.FormatFloat(spec.TokensPerSec, 'g', -1, 64),
		"-prompt-tokens-per-sec", "0",
		"-log-level", "warn",
	}
	args = append(args, spec.ExtraArgs...)
	p, err := e.Start(ProcSpec{
		Name: name,
		Path: filepath.Join(e.BinDir, "ollamasim"),
		Args: args,
	})
	if err != nil {
		return nil, err
	}
	return &Node{Name: name, Addr: addr, URL: "http://" + addr, Proc: p}, nil
}

// SetFaults replaces the node's faults through its control route, POST
// /_sim/faults. body is the faults as JSON, such as {"error_rate":0.5} or
// {"refuse":true,"clear_after":"2s"}; "{}" clears them.
func (n *Node) SetFaults(ctx context.Context, body string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.URL+"/_sim/faults",
		strings.NewReader(body))
	if err != nil {
		return fmt.Errorf("build fault request for %s: %w", n.Name, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("set faults of %s: %w", n.Name, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("set faults of %s: status %d: %s", n.Name, resp.StatusCode, bytes.TrimSpace(msg))
	}
	return nil
}
