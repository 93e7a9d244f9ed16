package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/llmproxy/llmproxy/ollamasim"
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
	// ExtraArgs are added to every node's command line after the flags
	// above, so they override them: fault flags, or -models and
	// -max-loaded for a fleet of several models.
	ExtraArgs []string
	// Cold leaves every model unloaded at the start: StartFleet then waits
	// for GET /api/version instead of loading Model, and targets wait for
	// the same route. Set it when ExtraArgs replace Model.
	Cold bool
	// Binary is the node program in Env.BinDir. Empty means ollamasim.
	Binary string
}

// Node is one running ollamasim process.
type Node struct {
	Name string
	// Addr is host:port, URL is http://Addr.
	Addr string
	URL  string
	// ControlURL is the base URL of the node's second listener, which
	// serves only the /_sim/ routes and stays up while the node refuses
	// connections.
	ControlURL string
	Proc       *Proc
}

// Fleet is the running nodes of a scenario.
type Fleet struct {
	Nodes []*Node
	// cold is FleetSpec.Cold.
	cold bool
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
// phase pays for one. A Cold fleet loads nothing: StartFleet waits until
// each node responds to GET /api/version.
func StartFleet(ctx context.Context, e *Env, spec FleetSpec) (*Fleet, error) {
	f := &Fleet{cold: spec.Cold}
	for i := range spec.Nodes {
		n, err := startNode(e, spec, i+1)
		if err != nil {
			f.Stop()
			return nil, err
		}
		f.Nodes = append(f.Nodes, n)
	}
	for i, n := range f.Nodes {
		err := f.waitReady(ctx, n.Proc, n.URL)
		// A port that FreeAddr found free can be taken by another process
		// before the node binds it, and the node then exits. Such a node
		// starts again on new ports.
		for try := 1; err != nil && n.Proc.Exited() && try < startTries; try++ {
			if n, err = startNode(e, spec, i+1); err != nil {
				break
			}
			f.Nodes[i] = n
			err = f.waitReady(ctx, n.Proc, n.URL)
		}
		if err != nil {
			f.Stop()
			return nil, fmt.Errorf("start node %s: %w", f.Nodes[i].Name, err)
		}
	}
	return f, nil
}

// startTries is how many times StartFleet starts a node that exits before
// it is ready.
const startTries = 3

// waitReady waits until the server at base serves: a generation request
// of Model, or GET /api/version on a cold fleet.
func (f *Fleet) waitReady(ctx context.Context, p *Proc, base string) error {
	if f.cold {
		return WaitReadyGet(ctx, p, base+"/api/version")
	}
	return WaitReady(ctx, p, base+"/api/generate", WarmBody)
}

func startNode(e *Env, spec FleetSpec, index int) (*Node, error) {
	addr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	controlAddr, err := FreeAddr()
	if err != nil {
		return nil, err
	}

	name := "node" + strconv.Itoa(index)
	args := []string{
		"-addr", addr,
		"-control-addr", controlAddr,
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

	binary := spec.Binary
	if binary == "" {
		binary = "ollamasim"
	}
	p, err := e.Start(ProcSpec{
		Name: name,
		Path: filepath.Join(e.BinDir, binary),
		Args: args,
	})
	if err != nil {
		return nil, err
	}
	return &Node{
		Name:       name,
		Addr:       addr,
		URL:        "http://" + addr,
		ControlURL: "http://" + controlAddr,
		Proc:       p,
	}, nil
}

// SetFaults replaces the node's faults through its control listener, POST
// /_sim/faults. body is the faults as JSON, such as {"error_rate":0.5} or
// {"refuse":true,"clear_after":"2s"}; "{}" clears them.
func (n *Node) SetFaults(ctx context.Context, body string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.ControlURL+"/_sim/faults",
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

// Stats returns the node's counters from GET /_sim/stats on its control
// listener.
func (n *Node) Stats(ctx context.Context) (ollamasim.Stats, error) {
	var st ollamasim.Stats
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.ControlURL+"/_sim/stats", nil)
	if err != nil {
		return st, fmt.Errorf("build stats request for %s: %w", n.Name, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, fmt.Errorf("read stats of %s: %w", n.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("read stats of %s: status %d", n.Name, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("decode stats of %s: %w", n.Name, err)
	}
	return st, nil
}

// Stats returns the counters of every node, in the order of f.Nodes.
func (f *Fleet) Stats(ctx context.Context) ([]ollamasim.Stats, error) {
	all := make([]ollamasim.Stats, len(f.Nodes))
	for i, n := range f.Nodes {
		st, err := n.Stats(ctx)
		if err != nil {
			return nil, err
		}
		all[i] = st
	}
	return all, nil
}
