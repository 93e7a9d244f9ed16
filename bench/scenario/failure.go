package scenario

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/llmproxy/llmproxy/bench/harness"
	"github.com/llmproxy/llmproxy/bench/loadgen"
	"github.com/llmproxy/llmproxy/bench/report"
)

// failover is the failure handling every proxy gets in the failure
// scenario: a health check every second, a 3 s bound on the wait for a
// response, which bounds the hang case, and up to 3 tries per request.
var failover = &harness.Failover{
	HealthInterval: time.Second,
	HealthTimeout:  500 * time.Millisecond,
	Connect:        time.Second,
	FirstByte:      3 * time.Second,
	Attempts:       3,
}

// failedNode is the index of the node that fails in each phase.
const failedNode = 1

// faultCase is one way the failed node misbehaves.
type faultCase struct {
	title string
	// faults is the body of POST /_sim/faults.
	faults string
}

// faultCases are a node that is down, one that fails some requests and
// one that stalls. The error draws are seeded, so that every target meets
// the same sequence of failures.
var faultCases = []faultCase{
	{title: "refuses connections", faults: `{"refuse":true}`},
	{title: "returns 500 for 30% of requests", faults: `{"error_rate":0.3,"seed":1}`},
	{title: "hangs before the first byte", faults: `{"hang":true}`},
}

// failureWorkers is the senders of a failure phase: at 200 requests per
// second they allow 5 s of latency, more than a hung request waits for
// the 3 s bound, before a request leaves late.
const failureWorkers = 1024

// failurePhase is the result of one fault case on one target.
type failurePhase struct {
	kind string
	res  loadgen.Result
	// atFailed counts the generation requests the failed node received
	// while it misbehaved.
	atFailed int64
}

// runFailure measures how each proxy serves while one of three nodes fails
// in the middle of a fixed-rate phase.
func runFailure(ctx context.Context, r *Run) (report.Section, error) {
	s := r.Settings
	section := report.Section{Title: "Failure while serving", Intro: failureIntro(s)}
	var llmproxyLost int64
	for _, fc := range faultCases {
		phases, err := failureCase(ctx, r, fc)
		if err != nil {
			return report.Section{}, fmt.Errorf("node %s: %w", fc.title, err)
		}
		section.Tables = append(section.Tables, failureTable(fc, phases))
		for _, p := range phases {
			if p.kind == harness.LLMProxy {
				llmproxyLost += p.res.Errors
			}
		}
	}
	if slices.Contains(proxyTargets(s), harness.LLMProxy) {
		r.AddGoal(report.Goal{
			Name:     "requests lost while a node fails",
			Target:   "0",
			Measured: fmt.Sprintf("%d over the %d fault cases", llmproxyLost, len(faultCases)),
			Met:      llmproxyLost == 0,
		})
	}
	return section, nil
}

// failureCase runs one fault case on every target, each in front of a new
// fleet, so that no target inherits a node that an earlier one broke.
func failureCase(ctx context.Context, r *Run, fc faultCase) ([]failurePhase, error) {
	var phases []failurePhase
	for _, kind := range proxyTargets(r.Settings) {
		p, err := failureOnce(ctx, r, fc, kind)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", kind, err)
		}
		phases = append(phases, p)
	}
	return phases, nil
}

// failureOnce starts a fleet and a target of kind, sends a warmup at the
// fixed rate, then measures a window in which the failed node misbehaves
// from a quarter to three quarters of its length.
func failureOnce(ctx context.Context, r *Run, fc faultCase, kind string) (failurePhase, error) {
	s := r.Settings
	if err := waitQuiet(ctx, r); err != nil {
		return failurePhase{}, err
	}
	fleet, err := harness.StartFleet(ctx, r.Env, generateFleet)
	if err != nil {
		return failurePhase{}, err
	}
	defer fleet.Stop()
	t, err := harness.StartTargetWith(ctx, r.Env, kind, fleet, harness.Options{Failover: failover})
	if err != nil {
		return failurePhase{}, err
	}
	defer stopTarget(r, t)

	client, err := loadgen.NewClient(t.URLs, failureWorkers)
	if err != nil {
		return failurePhase{}, err
	}
	defer client.Close()
	cfg := loadgen.OpenLoop{
		Rate:     s.FailureRate,
		Duration: s.Warmup,
		Workers:  failureWorkers,
		Request:  generateRequest,
	}
	loadgen.RunOpen(ctx, client, cfg)

	node := fleet.Nodes[failedNode]
	cfg.Duration = s.FailureWindow
	var res loadgen.Result
	received, err := withFault(ctx, node, fc.faults, s.FailureWindow, func() {
		res = loadgen.RunOpen(ctx, client, cfg)
	})
	return failurePhase{kind: kind, res: res, atFailed: received}, err
}

// withFault runs phase, which lasts window, and sets faults on node from a
// quarter to three quarters of the window. It returns the generation
// requests the node received while the faults were set, and the first
// error of setting or clearing them or of reading the node's counters.
func withFault(ctx context.Context, node *harness.Node, faults string, window time.Duration,
	phase func()) (int64, error) {
	var received int64
	var faultErr error
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		received, faultErr = faultSchedule(ctx, node, faults, window, stop)
	})
	phase()
	close(stop)
	wg.Wait()
	// A phase cut short leaves the faults set: clear them in any case.
	if err := node.SetFaults(context.WithoutCancel(ctx), "{}"); err != nil && faultErr == nil {
		faultErr = err
	}
	return received, faultErr
}

// faultSchedule sets faults on node a quarter into window and clears them
// at three quarters, unless stop closes first. It returns the generation
// requests the node received in between.
func faultSchedule(ctx context.Context, node *harness.Node, faults string, window time.Duration,
	stop <-chan struct{}) (int64, error) {
	start := time.Now()
	wait := func(at time.Duration) bool {
		select {
		case <-stop:
			return false
		case <-ctx.Done():
			return false
		case <-time.After(time.Until(start.Add(at))):
			return true
		}
	}
	if !wait(window / 4) {
		return 0, nil
	}
	before, err := node.Stats(ctx)
	if err != nil {
		return 0, err
	}
	if err := node.SetFaults(ctx, faults); err != nil {
		return 0, err
	}
	if !wait(window * 3 / 4) {
		return 0, nil
	}
	if err := node.SetFaults(ctx, "{}"); err != nil {
		return 0, err
	}
	after, err := node.Stats(ctx)
	if err != nil {
		return 0, err
	}
	return after.Requests[generateRequest.Path] - before.Requests[generateRequest.Path], nil
}

func failureIntro(s Settings) string {
	return fmt.Sprintf("Each proxy balances by least connections over %d simulated nodes "+
		"that respond at once, as in the non-streaming scenario, and receives `POST "+
		"/api/generate` at %s requests per second, evenly spaced, well below every "+
		"proxy's saturation. After %s of warmup comes a window of %s. One node "+
		"misbehaves from %s into the window until %s into it, and then recovers. "+
		"Every target starts with a new fleet and a new proxy process.\n\n"+
		"Every proxy has the same failure handling, as far as each allows: a health "+
		"check every %s with a %s timeout (`GET /api/version`; nginx has no active "+
		"checks outside its commercial edition), a %s connect timeout, "+
		"a %s bound on the wait for the response and %d tries per request on "+
		"different nodes. nginx has `proxy_next_upstream error timeout http_500 "+
		"http_502 http_503 non_idempotent`, because without `non_idempotent` it "+
		"never retries a POST that reached a node. HAProxy has `retry-on "+
		"all-retryable-errors` and `option redispatch 1`. llmproxy has `health: "+
		"{interval: %s, timeout: %s}` and `upstream.first_byte: %s`, and keeps its "+
		"default passive checks, circuit breaker and retry backoff, which sends the "+
		"first retry at once and waits only before later ones.\n\n"+
		"A lost request is one the client saw fail: a status other than 200 or a "+
		"transport error. \"Sent to the failed node\" counts the generation requests "+
		"that node received while it misbehaved, from its `GET /_sim/stats`, which "+
		"does not count refused connections. Latency counts the requests that "+
		"succeeded, from the time each was due.\n",
		generateFleet.Nodes, strconv.FormatFloat(s.FailureRate, 'f', -1, 64),
		s.Warmup, s.FailureWindow, s.FailureWindow/4, s.FailureWindow*3/4,
		failover.HealthInterval, failover.HealthTimeout, failover.Connect, failover.FirstByte,
		failover.Attempts, failover.HealthInterval, failover.HealthTimeout, failover.FirstByte)
}

// failureTable shows one fault case.
func failureTable(fc faultCase, phases []failurePhase) report.Table {
	t := report.Table{
		Title: "One node " + fc.title,
		Header: []string{"target", "requests", "lost", "lost by kind", "sent to the failed node",
			"p50 ms", "p99 ms", "p99.9 ms", "max ms"},
	}
	for _, p := range phases {
		t.Rows = append(t.Rows, []string{
			p.kind,
			strconv.FormatInt(p.res.Requests+p.res.Errors, 10),
			strconv.FormatInt(p.res.Errors, 10),
			kindsCell(p.res.ErrorKinds),
			strconv.FormatInt(p.atFailed, 10),
			report.Millis(p.res.Latency.P50),
			report.Millis(p.res.Latency.P99),
			report.Millis(p.res.Latency.P999),
			report.Millis(p.res.Latency.Max),
		})
	}
	return t
}

// kindsCell formats failures by kind, such as "status 500: 12, transport: 3".
func kindsCell(kinds map[string]int64) string {
	if len(kinds) == 0 {
		return report.NA
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(kinds)) {
		parts = append(parts, fmt.Sprintf("%s: %d", k, kinds[k]))
	}
	return strings.Join(parts, ", ")
}

// proxyTargets returns the proxies of the run that fail over
// (harness.Full), without the direct connection, which has no failover to
// measure.
func proxyTargets(s Settings) []string {
	var kinds []string
	for _, k := range fullTargets(s) {
		if k != harness.Direct {
			kinds = append(kinds, k)
		}
	}
	return kinds
}
