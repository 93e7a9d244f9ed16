package scenario

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/llmproxy/llmproxy/bench/harness"
	"github.com/llmproxy/llmproxy/bench/loadgen"
	"github.com/llmproxy/llmproxy/bench/report"
)

// generateRequest is a short non-streamed generation. The nodes respond
// at once (tokens-per-sec 0), so the phase measures the path, not the
// model.
var generateRequest = loadgen.Request{
	Path: "/api/generate",
	Body: []byte(`{"model":"` + harness.Model + `","prompt":"Why is the sky blue?",` +
		`"stream":false,"options":{"num_predict":8}}`),
}

// generateFleet is three unpaced nodes with more slots than connections,
// so that no request waits in a node's queue. They skip the checks of
// request bodies, which the benchmark's valid requests pass anyway and
// which would take more of the shared CPUs than the rest of a response.
var generateFleet = harness.FleetSpec{Nodes: 3, TokensPerSec: 0, Parallel: 256, MaxQueue: 4096,
	ExtraArgs: []string{"-skip-checks"}}

// openLoopWorkers is the senders of an open-loop phase: at 2,000 requests
// per second they allow 128 ms of latency before a request leaves late.
const openLoopWorkers = 256

// requestPhase is the result of one load phase on one target.
type requestPhase struct {
	kind string
	res  loadgen.Result
	use  usage
}

func (p requestPhase) disturbance() float64 { return p.use.others }

// cpuPer10k returns the proxy's CPU seconds per 10,000 completed requests.
func (p requestPhase) cpuPer10k() float64 {
	if !p.use.ok || p.res.Requests == 0 {
		return 0
	}
	return p.use.cpu.Seconds() / float64(p.res.Requests) * 10000
}

// kernelPer10k returns the part of cpuPer10k spent in the kernel.
func (p requestPhase) kernelPer10k() float64 {
	if p.res.Requests == 0 {
		return 0
	}
	return p.use.sys.Seconds() / float64(p.res.Requests) * 10000
}

// runGenerate measures non-streamed /api/generate: throughput at
// saturation, then latency at a fixed rate, on every target.
func runGenerate(ctx context.Context, r *Run) (report.Section, error) {
	fleet, err := harness.StartFleet(ctx, r.Env, generateFleet)
	if err != nil {
		return report.Section{}, err
	}
	defer fleet.Stop()
	targets, stop, err := startTargets(ctx, r, r.Settings.Targets, fleet)
	if err != nil {
		return report.Section{}, err
	}
	defer stop()

	saturated, err := inRounds(ctx, r, r.Settings.Targets, func(kind string) (requestPhase, error) {
		return saturate(ctx, r, targets[kind])
	})
	if err != nil {
		return report.Section{}, err
	}
	fixed, err := inRounds(ctx, r, r.Settings.Targets, func(kind string) (requestPhase, error) {
		return fixedRate(ctx, r, targets[kind])
	})
	if err != nil {
		return report.Section{}, err
	}

	addGenerateGoals(r, saturated, fixed)
	return report.Section{
		Title: "Non-streaming POST /api/generate",
		Intro: generateIntro(r.Settings),
		Tables: []report.Table{
			saturationTable(r.Settings, saturated),
			fixedRateTable(r.Settings, fixed, saturated),
		},
	}, nil
}

// saturate runs a closed-loop phase after a warmup.
func saturate(ctx context.Context, r *Run, t *harness.Target) (requestPhase, error) {
	s := r.Settings
	if err := waitQuiet(ctx, r); err != nil {
		return requestPhase{}, err
	}
	client, err := loadgen.NewClient(t.URLs, s.Conns)
	if err != nil {
		return requestPhase{}, err
	}
	defer client.Close()
	cfg := loadgen.ClosedLoop{Conns: s.Conns, Duration: s.Warmup, Request: generateRequest}
	loadgen.RunClosed(ctx, client, cfg)

	cfg.Duration = s.Saturation
	var res loadgen.Result
	use, err := measureUsage(r, t, "generate-saturation", func() {
		res = loadgen.RunClosed(ctx, client, cfg)
	})
	return requestPhase{kind: t.Kind, res: res, use: use}, err
}

// fixedRate runs an open-loop phase after a warmup at the same rate.
func fixedRate(ctx context.Context, r *Run, t *harness.Target) (requestPhase, error) {
	s := r.Settings
	if err := waitQuiet(ctx, r); err != nil {
		return requestPhase{}, err
	}
	client, err := loadgen.NewClient(t.URLs, openLoopWorkers)
	if err != nil {
		return requestPhase{}, err
	}
	defer client.Close()
	cfg := loadgen.OpenLoop{
		Rate:     s.Rate,
		Duration: s.Warmup,
		Workers:  openLoopWorkers,
		Request:  generateRequest,
	}
	loadgen.RunOpen(ctx, client, cfg)

	cfg.Duration = s.Fixed
	var res loadgen.Result
	use, err := measureUsage(r, t, "generate-fixed-rate", func() {
		res = loadgen.RunOpen(ctx, client, cfg)
	})
	return requestPhase{kind: t.Kind, res: res, use: use}, err
}

func generateIntro(s Settings) string {
	nodes := fmt.Sprintf("Each request is `POST /api/generate` with `\"stream\":false` and "+
		"`num_predict` 8, spread over %d simulated nodes that respond at once "+
		"(`ollamasim -tokens-per-sec 0 -parallel %d -skip-checks`). A direct connection "+
		"sends each request to the next node in turn.\n\n",
		generateFleet.Nodes, generateFleet.Parallel)
	if slices.Contains(s.Targets, harness.FastHTTP) {
		nodes += "The fasthttp row is bench/cmd/fasthttpproxy: a fasthttp server that " +
			"sends each request through a fasthttp client to the node with the " +
			"fewest requests in flight, and nothing else. llmproxy is built on the " +
			"same library and Go runtime, so the fasthttp row is what they cost by " +
			"themselves, and the difference to the llmproxy row is what llmproxy's " +
			"own handling adds: reading the model from the body, placement, " +
			"health and circuit-breaker reports, metrics, token accounting and " +
			"the client watch.\n\n"
	}
	phases := fmt.Sprintf("Saturation: %d connections, each sending its next request when the "+
		"last is complete, for %s after %s of warmup. Fixed rate: %s requests "+
		"per second, evenly spaced and sent whether or not earlier ones are "+
		"complete, for %s after %s of warmup. Latency counts from the time a "+
		"request was due.\n",
		s.Conns, s.Saturation, s.Warmup, strconv.FormatFloat(s.Rate, 'f', -1, 64), s.Fixed, s.Warmup)
	return nodes + phases
}

// saturationTable shows throughput and CPU cost at saturation.
func saturationTable(s Settings, phases []requestPhase) report.Table {
	t := report.Table{
		Title: fmt.Sprintf("Throughput at saturation (%d connections)", s.Conns),
		Header: []string{"target", "requests/s", "vs nginx", "p50 ms", "p99 ms", "errors",
			"proxy CPU s per 10k requests", kernelHeader, "CPU vs nginx", busyHeader, othersHeader},
	}
	ref, hasRef := find(phases, harness.Nginx)
	for _, p := range phases {
		vsNginx, cpuVsNginx := report.NA, report.NA
		if hasRef {
			vsNginx = report.Ratio(p.res.Throughput(), ref.res.Throughput())
		}
		if hasRef && p.use.ok {
			cpuVsNginx = report.Ratio(p.cpuPer10k(), ref.cpuPer10k())
		}
		t.Rows = append(t.Rows, []string{
			p.kind,
			fmt.Sprintf("%.0f", p.res.Throughput()),
			vsNginx,
			report.Millis(p.res.Latency.P50),
			report.Millis(p.res.Latency.P99),
			errorCell(p.res.Errors, p.res.FirstError),
			cpuCell(p),
			kernelCell(p),
			cpuVsNginx,
			busyCell(p.use),
			othersCell(p.use),
		})
	}
	t.Note = "The load generator, the nodes and the proxy share the machine's " +
		"CPUs, so requests/s is the throughput of the whole set-up. The " +
		"direct row is its ceiling without a proxy."
	return t
}

// fixedRateTable shows latency at the fixed rate, and what each proxy adds
// to the direct connection at the same percentile.
func fixedRateTable(s Settings, phases, saturated []requestPhase) report.Table {
	t := report.Table{
		Title: fmt.Sprintf("Latency at %s requests/s", strconv.FormatFloat(s.Rate, 'f', -1, 64)),
		Header: []string{"target", "completed", "p50 ms", "p99 ms", "p99.9 ms",
			"added p50 ms", "added p99 ms", "errors", "proxy CPU s per 10k requests", kernelHeader, busyHeader,
			othersHeader},
	}
	direct, hasDirect := find(phases, harness.Direct)
	for _, p := range phases {
		addedP50, addedP99 := report.NA, report.NA
		if hasDirect && p.kind != harness.Direct {
			addedP50 = report.SignedMillis(p.res.Latency.P50 - direct.res.Latency.P50)
			addedP99 = report.SignedMillis(p.res.Latency.P99 - direct.res.Latency.P99)
		}
		t.Rows = append(t.Rows, []string{
			p.kind,
			strconv.FormatInt(p.res.Requests, 10),
			report.Millis(p.res.Latency.P50),
			report.Millis(p.res.Latency.P99),
			report.Millis(p.res.Latency.P999),
			addedP50,
			addedP99,
			errorCell(p.res.Errors, p.res.FirstError),
			cpuCell(p),
			kernelCell(p),
			busyCell(p.use),
			othersCell(p.use),
		})
	}
	t.Note = "Added latency is the target's percentile minus the direct " +
		"connection's at the same percentile." + rateWarning(s, saturated)
	return t
}

// rateWarning returns a sentence when the fixed rate is close to a
// target's saturation throughput, where latency includes queueing.
func rateWarning(s Settings, saturated []requestPhase) string {
	for _, p := range saturated {
		if s.Rate > 0.7*p.res.Throughput() {
			return fmt.Sprintf(" The rate is above 70%% of the saturation throughput of %s "+
				"(%.0f requests/s), so its latency includes queueing.", p.kind, p.res.Throughput())
		}
	}
	return ""
}

// addGenerateGoals checks llmproxy's throughput and CPU against nginx and
// its added latency at the fixed rate against the direct connection.
func addGenerateGoals(r *Run, saturated, fixed []requestPhase) {
	if lp, ng, ok := pair(saturated, harness.LLMProxy, harness.Nginx); ok {
		r.AddGoal(report.Goal{
			Name:   "throughput at saturation",
			Target: "at least nginx's",
			Measured: fmt.Sprintf("%.0f vs %.0f requests/s (%s)",
				lp.res.Throughput(), ng.res.Throughput(),
				report.Ratio(lp.res.Throughput(), ng.res.Throughput())),
			Met: lp.res.Throughput() >= ng.res.Throughput(),
		})
		r.AddGoal(cpuGoal("CPU per request at saturation", lp, ng))
	}
	if lp, ng, ok := pair(fixed, harness.LLMProxy, harness.Nginx); ok {
		r.AddGoal(cpuGoal("CPU per request at the fixed rate", lp, ng))
	}
	if lp, direct, ok := pair(fixed, harness.LLMProxy, harness.Direct); ok {
		added := lp.res.Latency.P99 - direct.res.Latency.P99
		r.AddGoal(report.Goal{
			Name: fmt.Sprintf("p99 added latency at %s requests/s",
				strconv.FormatFloat(r.Settings.Rate, 'f', -1, 64)),
			Target:   "under 1 ms",
			Measured: report.SignedMillis(added) + " ms",
			Met:      added < time.Millisecond,
		})
	}
}

// cpuGoal compares llmproxy's CPU time per request with nginx's.
func cpuGoal(name string, lp, ng requestPhase) report.Goal {
	return report.Goal{
		Name:   name,
		Target: "at most nginx's",
		Measured: fmt.Sprintf("%.2f vs %.2f s per 10k requests (%s)",
			lp.cpuPer10k(), ng.cpuPer10k(), report.Ratio(lp.cpuPer10k(), ng.cpuPer10k())),
		Met: lp.cpuPer10k() <= ng.cpuPer10k(),
	}
}

// pair returns the phases of targets a and b. ok is false unless both ran.
func pair(phases []requestPhase, a, b string) (pa, pb requestPhase, ok bool) {
	pa, okA := find(phases, a)
	pb, okB := find(phases, b)
	return pa, pb, okA && okB
}

// find returns the phase of target kind.
func find(phases []requestPhase, kind string) (requestPhase, bool) {
	for _, p := range phases {
		if p.kind == kind {
			return p, true
		}
	}
	return requestPhase{}, false
}

// cpuCell formats the CPU seconds per 10,000 requests of a phase.
func cpuCell(p requestPhase) string {
	if !p.use.ok {
		return report.NA
	}
	return fmt.Sprintf("%.2f", p.cpuPer10k())
}

// kernelHeader is the column of kernelCell.
const kernelHeader = "of which kernel"

// kernelCell formats the part of cpuCell spent in the kernel.
func kernelCell(p requestPhase) string {
	if !p.use.ok {
		return report.NA
	}
	return fmt.Sprintf("%.2f", p.kernelPer10k())
}

// errorCell formats an error count with the first error.
func errorCell(n int64, first string) string {
	if n == 0 {
		return "0"
	}
	if len(first) > 60 {
		first = first[:60] + "…"
	}
	return fmt.Sprintf("%d (%s)", n, first)
}
