package harness

import (
	"context"
	"fmt"
	"os"
	"strings"
	"text/template"
	"time"
)

// The kinds of target a scenario can measure.
const (
	Direct   = "direct"
	LLMProxy = "llmproxy"
	Nginx    = "nginx"
	HAProxy  = "haproxy"
	// FastHTTP is bench/cmd/fasthttpproxy, a reverse proxy built from
	// fasthttp alone, without llmproxy's work per request. It buffers
	// responses and has no failover, so only the non-streamed scenario
	// measures it (see Full).
	FastHTTP = "fasthttp"
)

// Kinds lists every target kind in the order reports show them.
var Kinds = []string{Direct, LLMProxy, Nginx, HAProxy, FastHTTP}

// Full reports whether a target kind streams responses and retries on
// other nodes, as the streaming and failure scenarios need: every kind but
// FastHTTP.
func Full(kind string) bool { return kind != FastHTTP }

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

// StartTarget starts a target of kind in front of fleet with the configs
// of the throughput scenarios and waits until it serves a request.
func StartTarget(ctx context.Context, e *Env, kind string, fleet *Fleet) (*Target, error) {
	return StartTargetWith(ctx, e, kind, fleet, Options{})
}

// StartTargetWith starts a target of kind in front of fleet with the
// configs that opts change, and waits until it serves a generation
// request, or GET /api/version in front of a cold fleet.
func StartTargetWith(
	ctx context.Context,
	e *Env,
	kind string,
	fleet *Fleet,
	opts Options,
) (*Target, error) {
	if kind == Direct {
		return &Target{Kind: Direct, URLs: fleet.URLs()}, nil
	}
	addr, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	if opts.Name == "" {
		opts.Name = kind
	}

	var p *Proc
	switch kind {
	case LLMProxy:
		p, err = startLLMProxy(e, addr, fleet, opts)
	case Nginx:
		p, err = startNginx(e, addr, fleet, opts)
	case HAProxy:
		p, err = startHAProxy(e, addr, fleet, opts)
	case FastHTTP:
		p, err = startFastHTTP(e, addr, fleet, opts)
	default:
		return nil, fmt.Errorf("unknown target %q, want one of %s", kind, strings.Join(Kinds, ", "))
	}
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", opts.Name, err)
	}

	t := &Target{Kind: kind, URLs: []string{"http://" + addr}, Proc: p}
	if kind == LLMProxy {
		t.profileDir = e.ProfileDir
	}
	if err := fleet.waitReady(ctx, p, t.URLs[0]); err != nil {
		p.Stop()
		return nil, fmt.Errorf("start %s: %w", opts.Name, err)
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

// Options change the proxies' configs for one scenario. The zero value
// gives the configs of the throughput scenarios: least connections, each
// proxy's default failure handling, no cache.
type Options struct {
	// Name names the target's process, log and config files. Empty means
	// the kind; two targets of one kind that run at once need two names.
	Name string
	// Policy is llmproxy's balancer.policy. Empty means least_conn.
	Policy string
	// MaxConnsPerNode bounds each proxy's requests in flight on one node:
	// llmproxy's max_concurrent, nginx's max_conns and HAProxy's
	// maxconn. 0 means 4096, more than any phase sends.
	MaxConnsPerNode int
	// Failover, when set, turns on health checks, short timeouts and
	// retries on another node in every proxy.
	Failover *Failover
	// Cache turns on llmproxy's response cache, and RedisAddr, when set,
	// its Redis tier (L2).
	Cache     bool
	RedisAddr string
}

// Failover are the failure-handling settings of the failure scenario, set
// as alike as the three proxies allow.
type Failover struct {
	// HealthInterval and HealthTimeout are the period and timeout of
	// active health checks: llmproxy's health section and HAProxy's
	// inter and timeout check. nginx has no active checks outside its
	// commercial edition.
	HealthInterval time.Duration
	HealthTimeout  time.Duration
	// Connect bounds dialing a node.
	Connect time.Duration
	// FirstByte bounds the wait for a node's response: llmproxy's
	// upstream.first_byte, nginx's proxy_read_timeout and HAProxy's
	// timeout server.
	FirstByte time.Duration
	// Attempts is the tries of one request, the first included.
	Attempts int
}

// Retries returns the tries after the first, HAProxy's retries.
func (f *Failover) Retries() int { return f.Attempts - 1 }

// configData is the input of the proxies' config templates.
type configData struct {
	Options
	Listen          string
	Dir             string
	Nodes           []*Node
	MaxConnsPerNode int
	IdleKeepalive   int
	TimeoutSec      int
	Policy          string
}

// writeConfig renders tmpl with the shared settings and opts into the run
// folder, as opts.Name followed by ext.
func writeConfig(e *Env, ext, tmpl, listen string, fleet *Fleet, opts Options) (string, error) {
	name := opts.Name + ext
	t, err := template.New(name).Funcs(template.FuncMap{"ms": millis}).Parse(tmpl)
	if err != nil {
		return "", fmt.Errorf("parse %s template: %w", name, err)
	}
	data := configData{
		Options:         opts,
		Listen:          listen,
		Dir:             e.Dir,
		Nodes:           fleet.Nodes,
		MaxConnsPerNode: maxConnsPerNode,
		IdleKeepalive:   idleKeepalive,
		TimeoutSec:      streamTimeoutSec,
		Policy:          "least_conn",
	}
	if opts.MaxConnsPerNode > 0 {
		data.MaxConnsPerNode = opts.MaxConnsPerNode
	}
	if opts.Policy != "" {
		data.Policy = opts.Policy
	}
	var b strings.Builder
	if err := t.Execute(&b, data); err != nil {
		return "", fmt.Errorf("render %s: %w", name, err)
	}
	path := e.Path(name)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return "", fmt.Errorf("write %s: %w", name, err)
	}
	return path, nil
}

// millis formats d as whole milliseconds, a unit that llmproxy, nginx and
// HAProxy all accept with the suffix "ms".
func millis(d time.Duration) int64 {
	return d.Milliseconds()
}
