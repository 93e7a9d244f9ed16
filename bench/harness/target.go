package harness

import (
	"context"
	"fmt"
	"os"
	"strings"
	"text/template"
)

// The kinds of target a scenario can measure.
const (
	Direct   = "direct"
	LLMProxy = "llmproxy"
	Nginx    = "nginx"
	HAProxy  = "haproxy"
)

// Kinds lists every target kind in the order reports show them.
var Kinds = []string{Direct, LLMProxy, Nginx, HAProxy}

// Shared settings of the proxies, so that none wins by a different limit.
const (
	// maxConnsPerNode bounds the connections a proxy opens to one node.
	maxConnsPerNode = 4096
	// idleKeepalive is the idle connections nginx keeps per worker.
	idleKeepalive = 1024
	// streamTimeoutSec is the idle and total timeout of a proxied request.
	streamTimeoutSec = 120
)

// Target is the endpoint a load generator sends requests to: the nodes
// themselves (Direct) or a proxy in front of them.
type Target struct {
	Kind string
	// URLs are the base URLs to spread requests over: every node for
	// Direct, the proxy's one address otherwise.
	URLs []string
	// Proc is the proxy process, or nil for Direct.
	Proc *Proc

	// profileDir is the folder of a profiled llmproxy's CPU profiles, and
	// profiles counts the profiles started.
	profileDir string
	profiles   int
}

// StartTarget starts a target of kind in front of fleet and waits until it
// serves a generation request.
func StartTarget(ctx context.Context, e *Env, kind string, fleet *Fleet) (*Target, error) {
	if kind == Direct {
		return &Target{Kind: Direct, URLs: fleet.URLs()}, nil
	}
	addr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	var p *Proc
	switch kind {
	case LLMProxy:
		p, err = startLLMProxy(e, addr, fleet)
	case Nginx:
		p, err = startNginx(e, addr, fleet)
	case HAProxy:
		p, err = startHAProxy(e, addr, fleet)
	default:
		return nil, fmt.Errorf("unknown target %q, want one of %s", kind, strings.Join(Kinds, ", "))
	}
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", kind, err)
	}
	t := &Target{Kind: kind, URLs: []string{"http://" + addr}, Proc: p}
	if kind == LLMProxy {
		t.profileDir = e.ProfileDir
	}
	if err := WaitReady(ctx, p, t.URLs[0]+"/api/generate", WarmBody); err != nil {
		p.Stop()
		return nil, fmt.Errorf("start %s: %w", kind, err)
	}
	return t, nil
}

// Usage returns the resource use of the proxy. ok is false for Direct.
func (t *Target) Usage() (u Usage, ok bool, err error) {
	if t.Proc == nil {
		return Usage{}, false, nil
	}
	u, err = TreeUsage(t.Proc.PID())
	return u, err == nil, err
}

// ResetPeakRSS starts a new peak RSS window for the proxy. Direct has none.
func (t *Target) ResetPeakRSS() error {
	if t.Proc == nil {
		return nil
	}
	return ResetPeakRSS(t.Proc.PID())
}

// Stop stops the proxy. Direct has nothing to stop.
func (t *Target) Stop() error {
	if t.Proc == nil {
		return nil
	}
	return t.Proc.Stop()
}

// configData is the input of the proxies' config templates.
type configData struct {
	Listen          string
	Dir             string
	Nodes           []*Node
	MaxConnsPerNode int
	IdleKeepalive   int
	TimeoutSec      int
}

// writeConfig renders tmpl with the shared settings into the run folder.
func writeConfig(e *Env, name, tmpl, listen string, fleet *Fleet) (string, error) {
	t, err := template.New(name).Parse(tmpl)
	if err != nil {
		return "", fmt.Errorf("parse %s template: %w", name, err)
	}
	var b strings.Builder
	err = t.Execute(&b, configData{
		Listen:          listen,
		Dir:             e.Dir,
		Nodes:           fleet.Nodes,
		MaxConnsPerNode: maxConnsPerNode,
		IdleKeepalive:   idleKeepalive,
		TimeoutSec:      streamTimeoutSec,
	})
	if err != nil {
		return "", fmt.Errorf("render %s: %w", name, err)
	}
	path := e.Path(name)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return "", fmt.Errorf("write %s: %w", name, err)
	}
	return path, nil
}
