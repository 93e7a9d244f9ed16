// Package health watches the nodes with active probes on a schedule per
// node, passive tracking of failures seen on real traffic, a circuit
// breaker per node and the refresh of each node's model inventory. It sets
// node state in the balancer and never chooses nodes itself.
package health

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker/v2"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fastjson"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/wire"
	"github.com/llmproxy/llmproxy/metrics"
)

// Checker runs the health checks of every node of a balancer. Create it
// with New, start it with Run, and call Sync after the node set or the
// configuration changes.
type Checker struct {
	bal    *balancer.Balancer
	m      *metrics.Metrics
	log    *slog.Logger
	client *fasthttp.Client
	now    func() time.Time

	// mu guards cfg, trackers, loops and runCtx.
	mu       sync.Mutex
	cfg      *config.Config
	trackers map[*balancer.Node]*tracker
	loops    map[*balancer.Node]context.CancelFunc
	runCtx   context.Context
	wg       sync.WaitGroup

	// ejections caps the nodes that passive checks and breakers keep out.
	// Sync keeps its settings and trackers current.
	ejections ejectionCap

	// pulling contains a key for each node and model that models.ensure
	// is pulling, so that at most one pull runs per pair. pullMu guards it.
	pullMu  sync.Mutex
	pulling map[string]bool
	// pullCtx outlives single probes; Run cancels it when it ends.
	pullCtx    context.Context
	pullCancel context.CancelFunc

	// modelChanged is the function set by OnModelChange, nil until then.
	modelChanged atomic.Pointer[func(model, reason string)]
}

// New returns a checker for the nodes of bal. m may be nil.
func New(cfg *config.Config, bal *balancer.Balancer, m *metrics.Metrics, log *slog.Logger) *Checker {
	if log == nil {
		log = slog.Default()
	}
	c := &Checker{
		bal:      bal,
		m:        m,
		log:      log.With("component", "health"),
		client:   &fasthttp.Client{NoDefaultUserAgentHeader: true, MaxIdleConnDuration: 30 * time.Second},
		now:      time.Now,
		cfg:      cfg,
		trackers: map[*balancer.Node]*tracker{},
		loops:    map[*balancer.Node]context.CancelFunc{},
		pulling:  map[string]bool{},
	}
	c.pullCtx, c.pullCancel = context.WithCancel(context.Background())
	c.Sync(cfg)
	return c
}

// Sync adopts cfg and the balancer's current node set. A new node gets a
// tracker, and a probe loop once Run has started. An existing node's
// tracker takes the health and breaker settings of cfg, see tracker.apply.
// A node that was removed has its loop stopped, its tracker dropped and its
// gauges removed. Each model that a removed node listed and no remaining
// node lists goes to the function set by OnModelChange, after Sync has
// released its lock.
func (c *Checker) Sync(cfg *config.Config) {
	removed := c.syncNodes(cfg)
	c.reportRemovedNodes(removed)
}

// syncNodes does the work of Sync under c.mu and returns the nodes that
// left the balancer's node set.
func (c *Checker) syncNodes(cfg *config.Config) []*balancer.Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	// A loop waits out the interval that it read when its wait began, so the
	// loops restart when health.interval changes.
	restart := c.cfg.Health.Interval != cfg.Health.Interval
	c.cfg = cfg
	nodes := c.bal.Nodes()
	live := map[*balancer.Node]bool{}
	for _, n := range nodes {
		live[n] = true
		c.syncTrackerLocked(n, cfg)
	}
	for n, cancel := range c.loops {
		if restart || !live[n] {
			cancel()
			delete(c.loops, n)
		}
	}
	if c.runCtx != nil {
		for _, n := range nodes {
			c.startLoopLocked(n)
		}
	}
	removed := c.dropTrackersLocked(live)
	trackers := make([]*tracker, 0, len(nodes))
	for _, n := range nodes {
		trackers = append(trackers, c.trackers[n])
	}
	c.ejections.set(cfg.Health.MaxEjectionPercent, trackers)
	return removed
}

// reportRemovedNodes passes each model that a node in removed listed, and
// that no node of the balancer lists now, to the function set by
// OnModelChange, once. The cached responses of such a model would
// otherwise be served for it when a node lists it again, whose first list
// reports no change. A node whose url changed counts as removed, because
// the proxy cannot tell whether the new url reaches the same server, and
// its replacement lists nothing until its first probe.
func (c *Checker) reportRemovedNodes(removed []*balancer.Node) {
	fn := c.modelChanged.Load()
	if fn == nil || len(removed) == 0 {
		return
	}
	reported := map[string]bool{}
	for _, n := range removed {
		for _, m := range n.Models() {
			if reported[m.Name] || c.bal.HasModel(m.Name) {
				continue
			}
			reported[m.Name] = true
			(*fn)(m.Name, "no node lists the model since a reload removed node "+n.Name+
				" or changed its url")
		}
	}
}

// syncTrackerLocked gives n a tracker built from cfg, or applies cfg to the
// tracker it has.
func (c *Checker) syncTrackerLocked(n *balancer.Node, cfg *config.Config) {
	t, ok := c.trackers[n]
	if !ok {
		t = newTracker(n, cfg, c.now, c.breakerChanged, &c.ejections)
		c.trackers[n] = t
		n.SetGate(t)
		if c.m != nil {
			c.m.NodeBreaker.WithLabelValues(n.Name).Set(0)
		}
		return
	}
	if from, replaced := t.apply(cfg); replaced && from != gobreaker.StateClosed {
		c.breakerChanged(n, from, gobreaker.StateClosed)
	}
}

// dropTrackersLocked drops the trackers of the nodes not in live and
// returns those nodes.
func (c *Checker) dropTrackersLocked(live map[*balancer.Node]bool) []*balancer.Node {
	names := map[string]bool{}
	for n := range live {
		names[n.Name] = true
	}
	var removed []*balancer.Node
	for n := range c.trackers {
		if live[n] {
			continue
		}
		removed = append(removed, n)
		delete(c.trackers, n)
		// A node whose URL or limits changed is a new Node under the same
		// name, and keeps its series.
		if c.m != nil && !names[n.Name] {
			c.m.ForgetNode(n.Name)
		}
	}
	return removed
}

// Run probes every node once so that routing starts from a known state.
// It then probes each node in its own loop every health.interval until ctx
// ends, and returns once the loops and any model pulls have stopped.
func (c *Checker) Run(ctx context.Context) {
	c.ProbeAll(ctx)
	c.mu.Lock()
	c.runCtx = ctx
	for _, n := range c.bal.Nodes() {
		c.startLoopLocked(n)
	}
	c.mu.Unlock()
	<-ctx.Done()
	c.pullCancel()
	c.wg.Wait()
}

// ProbeAll probes every node concurrently and waits for the probes to
// finish. A node probed for the first time takes the state of that probe
// directly.
func (c *Checker) ProbeAll(ctx context.Context) {
	var wg sync.WaitGroup
	for _, n := range c.bal.Nodes() {
		t := c.tracker(n)
		if t == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.probe(ctx, t)
		}()
	}
	wg.Wait()
}

func (c *Checker) startLoopLocked(n *balancer.Node) {
	if _, ok := c.loops[n]; ok {
		return
	}
	ctx, cancel := context.WithCancel(c.runCtx)
	c.loops[n] = cancel
	t := c.trackers[n]
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.loop(ctx, t)
	}()
}

func (c *Checker) loop(ctx context.Context, t *tracker) {
	for {
		interval := c.config().Health.Interval
		timer := time.NewTimer(interval)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		c.probe(ctx, t)
	}
}

func (c *Checker) config() *config.Config {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cfg
}

func (c *Checker) tracker(n *balancer.Node) *tracker {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.trackers[n]
}

// probe checks one node with a cheap GET /api/version. When the node
// responds, probe also refreshes its inventory if discovery.interval has
// passed since the last refresh, the node is down or this is its first
// probe. A node that is up afterwards gets pulls of its missing
// models.ensure models.
func (c *Checker) probe(ctx context.Context, t *tracker) {
	t.probeMu.Lock()
	defer t.probeMu.Unlock()
	cfg := c.config()
	n := t.node
	err := c.checkVersion(ctx, n, cfg.Health.Timeout)
	stale := c.now().Sub(n.Refreshed()) >= cfg.Discovery.Interval
	if err == nil && (stale || !n.Up() || !t.probed) {
		err = c.Refresh(ctx, n)
	}
	if ctx.Err() != nil {
		return
	}
	c.applyProbe(t, err, cfg.Health)
	c.noteTimeouts(t)
	// Usability also changes as passive fail timeouts and breaker open
	// timeouts expire, so queued requests get another chance at every probe.
	c.bal.Dispatch()
	if err == nil && n.Up() {
		c.ensureModels(n, cfg.Models.Ensure)
	}
}

// applyProbe moves the node up or down once enough probes in a row
// agree. The first probe of a node decides its state at once.
func (c *Checker) applyProbe(t *tracker, err error, h config.Health) {
	n := t.node
	first := !t.probed
	t.probed = true
	if err != nil {
		t.okStreak = 0
		t.failStreak++
		n.SetLastError(err.Error())
		if n.Up() && (first || t.failStreak >= h.UnhealthyThreshold) {
			n.SetUp(false)
			c.log.Info("node down", "node", n.Name, "reason", err.Error(),
				"failed_probes", t.failStreak)
		}
	} else {
		t.failStreak = 0
		t.okStreak++
		if !n.Up() && (first || t.okStreak >= h.HealthyThreshold) {
			// A good probe shows only that the node responds to GET
			// /api/version, so a passive take-out and an open breaker run
			// their course.
			n.SetUp(true)
			attrs := []any{"node", n.Name, "good_probes", t.okStreak}
			if left := t.passiveRemaining(); left > 0 {
				attrs = append(attrs, "passive_out_remaining", left)
			}
			if state := t.breakerState(); state != gobreaker.StateClosed.String() {
				attrs = append(attrs, "breaker", state)
			}
			c.log.Info("node up", attrs...)
		}
	}
	c.setNodeGauges(n)
}

// noteTimeouts logs the end of a passive take-out of the node, and moves
// its open breaker to half-open once breaker.open_timeout has passed. No
// timer marks either timeout, so the node's first probe after it notices
// it, up to health.interval late. The log line of a take-out's end carries
// the time it ended. A placement that checks the node's breaker moves the
// breaker earlier, and the breaker logs each change itself (see
// breakerChanged).
func (c *Checker) noteTimeouts(t *tracker) {
	// gobreaker moves an open breaker to half-open when its state is read
	// after the timeout.
	t.breaker.Load().cb.State()
	if end := t.ended(); end != nil {
		c.logTakeOutEnd(t.node, end)
	}
}

// logTakeOutEnd logs that a passive take-out of n has ended.
func (c *Checker) logTakeOutEnd(n *balancer.Node, end *takeOutEnd) {
	c.log.Info("passive take-out of node ended", "node", n.Name,
		"out_for", end.lasted, "ended_at", end.at)
}

func (c *Checker) setNodeGauges(n *balancer.Node) {
	if c.m == nil {
		return
	}
	up := 0.0
	if n.Usable() {
		up = 1
	}
	c.m.NodeUp.WithLabelValues(n.Name).Set(up)
	loaded := n.LoadedModels()
	var vram int64
	for _, l := range loaded {
		vram += l.SizeVRAM
	}
	c.m.NodeLoadedModels.WithLabelValues(n.Name).Set(float64(len(loaded)))
	c.m.NodeVRAMBytes.WithLabelValues(n.Name).Set(float64(vram))
}

func (c *Checker) breakerChanged(n *balancer.Node, from, to gobreaker.State) {
	if c.m != nil {
		c.m.NodeBreaker.WithLabelValues(n.Name).Set(breakerGauge(to))
	}
	c.log.Info("node breaker changed", "node", n.Name, "from", from.String(), "to", to.String())
}

// Report records the outcome of one request on n in the node's breaker and
// passive failure count. An empty failure is a success. Report implements
// the proxy's HealthReporter.
func (c *Checker) Report(n *balancer.Node, failure string) {
	t := c.tracker(n)
	if t == nil {
		return
	}
	r := t.report(failure)
	if r.ended != nil {
		c.logTakeOutEnd(n, r.ended)
	}
	if r.out != nil {
		c.log.Info("node taken out by passive checks", "node", n.Name, "reason", failure,
			"failures", r.out.failures, "for", r.out.duration, "restricted", r.out.restricted)
	}
	c.noteHeld(t, r)
	// A success cannot make the node unusable, so only a failure updates the
	// gauge here. /metrics refreshes it on every scrape.
	if c.m != nil && failure != "" {
		up := 0.0
		if n.Usable() {
			up = 1
		}
		c.m.NodeUp.WithLabelValues(n.Name).Set(up)
	}
}

// noteHeld counts the take-outs that the ejection cap skipped in r, and
// logs them at most once per heldLogInterval and node.
func (c *Checker) noteHeld(t *tracker, r reported) {
	if !r.passiveHeld && r.breakerHeld == 0 {
		return
	}
	n := t.node
	if c.m != nil {
		if r.passiveHeld {
			c.m.EjectionsSkipped.WithLabelValues(n.Name, "passive").Inc()
		}
		if r.breakerHeld > 0 {
			c.m.EjectionsSkipped.WithLabelValues(n.Name, "breaker").Add(float64(r.breakerHeld))
		}
	}
	if t.heldLogDue() {
		check := "passive"
		if !r.passiveHeld {
			check = "breaker"
		}
		c.log.Info("node kept in despite failures: health.max_ejection_percent nodes are out, "+
			"or it is the last usable node of a model", "node", n.Name, "check", check,
			"max_ejection_percent", c.config().Health.MaxEjectionPercent)
	}
}

// Alive probes n with GET /api/version within health.timeout, as the
// active checks do, and returns nil when n responds with its version. It
// changes no health state of n. Concurrent calls for one node share one
// probe, so that the requests that time out together on a node send it
// one probe. Alive implements the proxy's HealthReporter.
func (c *Checker) Alive(ctx context.Context, n *balancer.Node) error {
	t := c.tracker(n)
	if t == nil {
		return fmt.Errorf("node %s: not in the configuration", n.Name)
	}
	t.probeCallMu.Lock()
	call := t.probeCall
	if call != nil {
		t.probeCallMu.Unlock()
		select {
		case <-call.done:
			return call.err
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	call = &liveness{done: make(chan struct{})}
	t.probeCall = call
	t.probeCallMu.Unlock()

	// The callers that share the probe must not take this caller's end for
	// a failure of the node, so the probe ends only at health.timeout.
	call.err = c.checkVersion(context.WithoutCancel(ctx), n, c.config().Health.Timeout)
	t.probeCallMu.Lock()
	t.probeCall = nil
	t.probeCallMu.Unlock()
	close(call.done)
	return call.err
}

// liveness is one probe of Alive and its result, which err holds once done
// is closed.
type liveness struct {
	done chan struct{}
	err  error
}

// BreakerState returns the state of the node's breaker: closed, half-open
// or open, with " (passive out)" appended while passive checks keep the node
// out, or "unknown" for a node without a tracker.
func (c *Checker) BreakerState(n *balancer.Node) string {
	if t := c.tracker(n); t != nil {
		if t.passiveOut() {
			return t.breakerState() + " (passive out)"
		}
		return t.breakerState()
	}
	return "unknown"
}

func (c *Checker) get(ctx context.Context, n *balancer.Node, path string, timeout time.Duration) ([]byte, error) {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(n.URL.String() + path)
	req.Header.SetMethod("GET")
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if err := c.client.DoDeadline(req, resp, deadline); err != nil {
		return nil, fmt.Errorf("GET %s on node %s: %w", path, n.Name, err)
	}
	if st := resp.StatusCode(); st != 200 {
		return nil, fmt.Errorf("GET %s on node %s: status %d", path, n.Name, st)
	}
	return append([]byte(nil), resp.Body()...), nil
}

func (c *Checker) checkVersion(ctx context.Context, n *balancer.Node, timeout time.Duration) error {
	body, err := c.get(ctx, n, "/api/version", timeout)
	if err != nil {
		return err
	}
	v := fastjson.GetString(body, "version")
	if v == "" {
		return fmt.Errorf("node %s: /api/version response has no version field", n.Name)
	}
	n.SetVersion(v)
	return nil
}

// Refresh reads the node's /api/tags and /api/ps and replaces its
// inventory. It implements the proxy's Inventory.
func (c *Checker) Refresh(ctx context.Context, n *balancer.Node) error {
	timeout := c.config().Health.Timeout
	tags, err := c.get(ctx, n, "/api/tags", timeout)
	if err != nil {
		return err
	}
	ps, err := c.get(ctx, n, "/api/ps", timeout)
	if err != nil {
		return err
	}
	models, err := parseTags(tags)
	if err != nil {
		return fmt.Errorf("node %s /api/tags: %w", n.Name, err)
	}
	loaded, err := parsePS(ps)
	if err != nil {
		return fmt.Errorf("node %s /api/ps: %w", n.Name, err)
	}
	changes := n.SetInventory(models, loaded, c.now())
	c.setNodeGauges(n)
	c.reportModelChanges(n, changes)
	return nil
}

// OnModelChange sets fn to receive each model whose cached responses a
// refresh or Sync shows to be stale, with the reason for the log. A model
// is stale when its digest changed on a node, or when no node lists it any
// more after a node stopped listing it or left the node set. A node's
// first list, and a list equal to the previous one, report nothing. fn
// runs in the goroutine of the refresh or Sync, which waits for it.
func (c *Checker) OnModelChange(fn func(model, reason string)) {
	c.modelChanged.Store(&fn)
}

// reportModelChanges passes the changes of n's model list that make cached
// responses stale to the function set by OnModelChange. A model that n no
// longer lists counts only when no other node lists it, by the last list
// of a node that is down too, because the model that another node lists
// keeps the cached responses valid.
func (c *Checker) reportModelChanges(n *balancer.Node, changes []balancer.ModelChange) {
	fn := c.modelChanged.Load()
	if fn == nil {
		return
	}
	for _, ch := range changes {
		switch {
		case !ch.Removed:
			(*fn)(ch.Name, "digest changed on node "+n.Name)
		case !c.bal.HasModel(ch.Name):
			(*fn)(ch.Name, "no node lists the model since node "+n.Name+" stopped listing it")
		}
	}
}

func parseTags(body []byte) ([]balancer.Model, error) {
	var p fastjson.Parser
	v, err := p.ParseBytes(body)
	if err != nil {
		return nil, err
	}
	var out []balancer.Model
	for _, m := range v.GetArray("models") {
		name := string(m.GetStringBytes("name"))
		if name == "" {
			name = string(m.GetStringBytes("model"))
		}
		out = append(out, balancer.Model{
			Name:   wire.NormalizeModel(name),
			Digest: string(m.GetStringBytes("digest")),
			Size:   m.GetInt64("size"),
			Raw:    m.MarshalTo(nil),
		})
	}
	return out, nil
}

func parsePS(body []byte) ([]balancer.Loaded, error) {
	var p fastjson.Parser
	v, err := p.ParseBytes(body)
	if err != nil {
		return nil, err
	}
	var out []balancer.Loaded
	for _, m := range v.GetArray("models") {
		name := string(m.GetStringBytes("name"))
		if name == "" {
			name = string(m.GetStringBytes("model"))
		}
		l := balancer.Loaded{
			Name:     wire.NormalizeModel(name),
			SizeVRAM: m.GetInt64("size_vram"),
			NumCtx:   m.GetInt("context_length"),
			Raw:      m.MarshalTo(nil),
		}
		if t, err := time.Parse(time.RFC3339Nano, string(m.GetStringBytes("expires_at"))); err == nil {
			l.ExpiresAt = t
		}
		out = append(out, l)
	}
	return out, nil
}
