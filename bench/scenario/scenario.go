// Package scenario defines what a benchmark run measures. A scenario is a
// function: it starts its simulated nodes and targets through the harness,
// runs load phases against each target in turn, and returns a report
// section and the goals it checked. Add a scenario by writing such a
// function and listing it in All.
//
// The helpers shared by scenarios are startTargets (one instance of each
// target for the whole scenario) or harness.StartTarget (one per phase),
// inRounds (every target in turn, for Settings.Rounds rounds), waitQuiet
// before a phase, and measureUsage around it. A failure scenario can start
// nodes with fault flags through harness.FleetSpec.ExtraArgs, or change
// the faults of a running node with harness.Node.SetFaults.
// harness.StartTargetWith changes a proxy's config from that of the
// throughput scenarios: placement policy, per-node limit, failover, cache.
package scenario

import (
	"context"
	"fmt"
	"time"

	"github.com/llmproxy/llmproxy/bench/harness"
	"github.com/llmproxy/llmproxy/bench/report"
)

// Settings are the sizes and durations of the load phases.
type Settings struct {
	// Targets are the target kinds to compare, in report order. The
	// "added latency" columns need harness.Direct among them.
	Targets []string
	// Warmup is load sent before each measured phase and not counted.
	Warmup time.Duration
	// Saturation is the length of a closed-loop phase, and Conns its
	// number of workers.
	Saturation time.Duration
	Conns      int
	// Rate is the request rate of an open-loop phase, per second, and
	// Fixed its length.
	Rate  float64
	Fixed time.Duration
	// StreamLevels are the numbers of concurrent streams to measure.
	StreamLevels []int
	// StreamRamp is the time over which streams start, and StreamWindow the
	// measured time after it.
	StreamRamp   time.Duration
	StreamWindow time.Duration
	// Rounds is how often each phase runs on each target, the targets
	// taking turns. Reports show per target the round that other
	// processes on the machine disturbed least.
	Rounds int
	// QuietWait bounds the wait before each phase for other processes to
	// use at most quietThreshold of the CPUs.
	QuietWait time.Duration

	// FailureRate is the request rate of the failure scenario, per
	// second, and FailureWindow the length of its measured window.
	FailureRate   float64
	FailureWindow time.Duration

	// TraceArrivals is the time over which the scheduler trace's
	// conversations arrive, at TraceRate per second, and TraceDrain the
	// time after it that the run waits for open turns.
	TraceArrivals time.Duration
	TraceRate     float64
	TraceDrain    time.Duration

	// CacheProbes is the distinct requests of each cache tier's latency
	// phase, and CacheRequests the requests of the repeated-embedding
	// workload, drawn from CacheInputs strings.
	CacheProbes   int
	CacheRequests int
	CacheInputs   int

	// GoTool is the go command that runs the Go benchmarks, and
	// GoBenchRuns how often each benchmark command runs.
	GoTool      string
	GoBenchRuns int
}

// DefaultSettings returns the settings of make bench, or of make
// bench-quick when quick is set: shorter phases, 100 streams only and no
// HAProxy, to stay under two minutes.
func DefaultSettings(quick bool) Settings {
	if quick {
		return Settings{
			Targets:      []string{harness.Direct, harness.LLMProxy, harness.Nginx},
			Warmup:       time.Second,
			Saturation:   3 * time.Second,
			Conns:        64,
			Rate:         2000,
			Fixed:        3 * time.Second,
			StreamLevels: []int{100},
			StreamRamp:   time.Second,
			StreamWindow: 3 * time.Second,
			Rounds:       1,
			QuietWait:    time.Second,

			FailureRate:   200,
			FailureWindow: 3 * time.Second,

			TraceArrivals: 20 * time.Second,
			TraceRate:     1,
			TraceDrain:    20 * time.Second,

			CacheProbes:   300,
			CacheRequests: 2000,
			CacheInputs:   400,

			GoTool:      "go",
			GoBenchRuns: 3,
		}
	}
	return Settings{
		Targets:      harness.Kinds,
		Warmup:       2 * time.Second,
		Saturation:   10 * time.Second,
		Conns:        64,
		Rate:         2000,
		Fixed:        10 * time.Second,
		StreamLevels: []int{100, 1000},
		StreamRamp:   2 * time.Second,
		StreamWindow: 10 * time.Second,
		Rounds:       2,
		QuietWait:    10 * time.Second,

		FailureRate:   200,
		FailureWindow: 16 * time.Second,

		TraceArrivals: 60 * time.Second,
		TraceRate:     1,
		TraceDrain:    60 * time.Second,

		CacheProbes:   2000,
		CacheRequests: 10000,
		CacheInputs:   2000,

		GoTool:      "go",
		GoBenchRuns: 3,
	}
}

// Run is the state shared by the scenarios of one benchmark run.
type Run struct {
	Env      *harness.Env
	Settings Settings
	goals    []report.Goal
	// round is the round inRounds is running, from 1.
	round int
}

// AddGoal records a goal checked by a scenario.
func (r *Run) AddGoal(g report.Goal) { r.goals = append(r.goals, g) }

// Goals returns the goals checked so far.
func (r *Run) Goals() []report.Goal { return r.goals }

// Scenario is one named measurement.
type Scenario struct {
	Name string
	// Quick marks a scenario that make bench-quick runs too.
	Quick bool
	Run   func(ctx context.Context, r *Run) (report.Section, error)
}

// All returns every scenario in report order.
func All() []Scenario {
	return []Scenario{
		{Name: "generate", Quick: true, Run: runGenerate},
		{Name: "stream", Quick: true, Run: runStream},
		{Name: "failure", Quick: true, Run: runFailure},
		{Name: "schedule", Run: runSchedule},
		{Name: "cache", Quick: true, Run: runCache},
		{Name: "gobench", Run: runGoBench},
	}
}

// startTargets starts a target of each kind in front of fleet and returns
// them by kind. The returned stop function stops those that started.
func startTargets(
	ctx context.Context,
	r *Run,
	kinds []string,
	fleet *harness.Fleet,
) (map[string]*harness.Target, func(), error) {
	targets := map[string]*harness.Target{}
	stop := func() {
		for _, t := range targets {
			stopTarget(r, t)
		}
	}
	for _, kind := range kinds {
		t, err := harness.StartTarget(ctx, r.Env, kind, fleet)
		if err != nil {
			stop()
			return nil, nil, err
		}
		targets[kind] = t
	}
	return targets, stop, nil
}

// fullTargets returns the target kinds of the run that stream and fail
// over (harness.Full), for the scenarios that need both.
func fullTargets(s Settings) []string {
	var kinds []string
	for _, k := range s.Targets {
		if harness.Full(k) {
			kinds = append(kinds, k)
		}
	}
	return kinds
}

// stopTarget stops t and logs a failure to stop, which leaves the
// measurements valid.
func stopTarget(r *Run, t *harness.Target) {
	if err := t.Stop(); err != nil {
		r.Env.Log.Warn("stop target", "target", t.Kind, "err", err)
	}
}

// usage is the resource use of a target's proxy during one phase.
type usage struct {
	// ok is false for a target without a proxy process.
	ok  bool
	cpu time.Duration
	// sys is the part of cpu spent in the kernel.
	sys          time.Duration
	peakRSSBytes int64
	// others is the share of all CPUs that processes outside the
	// benchmark used during the phase.
	others float64
	// busy is the share of all CPUs that was busy during the phase, the
	// benchmark's processes included.
	busy float64
}

// quietThreshold is the share of all CPUs other processes may use before
// a phase starts without waiting: a tenth of the machine.
const quietThreshold = 0.1

// quietSample is the span over which WaitQuiet measures other processes.
// It also separates two phases, so that connections closed by one are
// gone before the next starts.
const quietSample = 500 * time.Millisecond

// waitQuiet waits, up to Settings.QuietWait, for other processes to use
// at most quietThreshold of the CPUs. Phases call it before their warmup.
func waitQuiet(ctx context.Context, r *Run) error {
	_, err := r.Env.WaitQuiet(ctx, quietThreshold, quietSample, r.Settings.QuietWait)
	return err
}

// measureUsage runs phase and returns the CPU time the target's proxy
// spent meanwhile, its peak RSS during the phase, and the CPU share of
// other processes. A profiled target saves the phase's CPU profile under
// label.
func measureUsage(r *Run, t *harness.Target, label string,
	phase func()) (usage, error) {
	if err := t.ResetPeakRSS(); err != nil {
		return usage{}, err
	}
	machineBefore, err := r.Env.Snapshot()
	if err != nil {
		return usage{}, err
	}
	before, ok, err := t.Usage()
	if err != nil {
		return usage{}, err
	}
	if err := t.StartProfile(); err != nil {
		return usage{}, err
	}
	phase()
	profile := fmt.Sprintf("%s-round%d", label, r.round)
	if err := t.StopProfile(profile); err != nil {
		return usage{}, err
	}
	after, _, err := t.Usage()
	if err != nil {
		return usage{}, fmt.Errorf("%s after the phase: %w", t.Kind, err)
	}
	machineAfter, err := r.Env.Snapshot()
	if err != nil {
		return usage{}, err
	}
	return usage{
		ok:           ok,
		cpu:          after.CPU - before.CPU,
		sys:          after.System - before.System,
		peakRSSBytes: after.PeakRSSBytes,
		others:       machineAfter.OthersShare(machineBefore),
		busy:         machineAfter.BusyShare(machineBefore),
	}, nil
}

// othersCell formats the CPU share of other processes during a phase.
func othersCell(u usage) string {
	return fmt.Sprintf("%.0f", u.others*100)
}

// othersHeader is the column of othersCell.
const othersHeader = "others' CPU %"

// busyCell formats the share of all CPUs busy during a phase.
func busyCell(u usage) string {
	return fmt.Sprintf("%.0f", u.busy*100)
}

// busyHeader is the column of busyCell.
const busyHeader = "machine busy %"

// disturbed is a phase result that reports how much other processes used
// the machine while it ran.
type disturbed interface {
	disturbance() float64
}

// inRounds runs phase r.Settings.Rounds times on every kind of kinds, the
// targets taking turns, and returns per target the round with the least
// disturbance. Choosing by disturbance, never by the result, keeps the
// choice from favouring any target.
func inRounds[P disturbed](ctx context.Context, r *Run, kinds []string,
	phase func(kind string) (P, error)) ([]P, error) {
	best := make([]P, len(kinds))
	for round := range max(r.Settings.Rounds, 1) {
		r.round = round + 1
		for i, kind := range kinds {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			p, err := phase(kind)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", kind, err)
			}
			if round == 0 || p.disturbance() < best[i].disturbance() {
				best[i] = p
			}
		}
	}
	return best, nil
}
