package scenario

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/llmproxy/llmproxy/bench/harness"
	"github.com/llmproxy/llmproxy/bench/loadgen"
	"github.com/llmproxy/llmproxy/bench/report"
)

// tokensPerSec paces the streamed tokens: one chunk about every 15 ms.
const tokensPerSec = 66

// streamFleet has enough slots that 1,000 streams never queue in a node,
// even when a balancer sends all of them to one node. Its nodes are
// stampsim: ollamasim with a lean path for streamed chat, which costs the
// shared CPU little per chunk and adds the time it wrote each SSE event,
// so that SSE chunks have a latency as NDJSON lines do.
var streamFleet = harness.FleetSpec{
	Nodes:        3,
	TokensPerSec: tokensPerSec,
	Parallel:     2000,
	MaxQueue:     4096,
	Binary:       "stampsim",
}

// streamCase is one streamed route.
type streamCase struct {
	title  string
	format loadgen.Format
	path   string
	body   []byte
}

// streamCases are Ollama's NDJSON chat and OpenAI's SSE chat completions.
// The simulated nodes end a response after 20 to 40 tokens, before
// num_predict or max_tokens is reached.
var streamCases = []streamCase{
	{
		title:  "NDJSON POST /api/chat",
		format: loadgen.NDJSON,
		path:   "/api/chat",
		body: []byte(`{"model":"` + harness.Model + `","messages":[{"role":"user",` +
			`"content":"Tell me a story."}],"options":{"num_predict":64}}`),
	},
	{
		title:  "SSE POST /v1/chat/completions",
		format: loadgen.SSE,
		path:   "/v1/chat/completions",
		body: []byte(`{"model":"` + harness.Model + `","stream":true,"max_tokens":64,` +
			`"messages":[{"role":"user","content":"Tell me a story."}]}`),
	},
}

// streamPhase is the result of one stream phase on one target.
type streamPhase struct {
	kind    string
	streams int
	res     loadgen.StreamResult
	use     usage
}

func (p streamPhase) disturbance() float64 { return p.use.others }

// runStream measures streamed chat on every target at each stream level.
func runStream(ctx context.Context, r *Run) (report.Section, error) {
	fleet, err := harness.StartFleet(ctx, r.Env, streamFleet)
	if err != nil {
		return report.Section{}, err
	}
	defer fleet.Stop()

	section := report.Section{Title: "Streaming chat", Intro: streamIntro(r.Settings)}
	var atMax []streamPhase
	for _, c := range streamCases {
		for _, level := range r.Settings.StreamLevels {
			phases, err := inRounds(ctx, r, fullTargets(r.Settings), func(kind string) (streamPhase, error) {
				return streamOnce(ctx, r, fleet, kind, streamCall{c: c, streams: level})
			})
			if err != nil {
				return report.Section{}, err
			}
			section.Tables = append(section.Tables, streamTable(c, level, phases))
			if level == maxLevel(r.Settings.StreamLevels) {
				atMax = append(atMax, phases...)
				addChunkGoal(r, c, level, phases)
			}
		}
	}
	addMemoryGoal(r, maxLevel(r.Settings.StreamLevels), atMax)
	return section, nil
}

// streamCall is one stream phase: a case at a number of streams.
type streamCall struct {
	c       streamCase
	streams int
}

// streamOnce runs one case at one number of streams on a target of kind
// started for this phase alone. A process returns freed memory to the
// system slowly, if at all, so a target that ran an earlier phase would
// carry that phase's resident set into this phase's peak.
func streamOnce(ctx context.Context, r *Run, fleet *harness.Fleet, kind string,
	call streamCall) (streamPhase, error) {
	c, streams := call.c, call.streams
	if err := waitQuiet(ctx, r); err != nil {
		return streamPhase{}, err
	}
	t, err := harness.StartTarget(ctx, r.Env, kind, fleet)
	if err != nil {
		return streamPhase{}, err
	}
	defer stopTarget(r, t)

	load := loadgen.StreamLoad{
		URLs: t.URLs, Path: c.path, Body: c.body, Format: c.format,
		Streams: streams, Ramp: r.Settings.StreamRamp, Duration: r.Settings.StreamWindow,
	}
	var res loadgen.StreamResult
	label := fmt.Sprintf("stream-%s-%d", strings.ToLower(c.format.String()), streams)
	use, err := measureUsage(r, t, label, func() { res = loadgen.RunStreams(ctx, load) })
	return streamPhase{kind: t.Kind, streams: streams, res: res, use: use}, err
}

func streamIntro(s Settings) string {
	return fmt.Sprintf("%d simulated nodes stream one token per chunk at %d tokens "+
		"per second, a chunk about every 15 ms (`stampsim -tokens-per-sec %d "+
		"-parallel %d`), and a response has 20 to 40 chunks. Each of N workers opens "+
		"one stream after another over one keep-alive connection, to one of the "+
		"nodes when direct: the workers start within %s, then the "+
		"samples of the next %s count. Each phase starts a new proxy "+
		"process, and its CPU time and peak RSS (VmHWM) cover the ramp and "+
		"the window.\n\n"+
		"The nodes are bench/cmd/stampsim: ollamasim's routes and wire format, "+
		"with streamed chat served by one goroutine per node that writes each "+
		"chunk with one non-blocking system call, so that the nodes take little "+
		"of the CPU the proxies share with them. It writes the time of writing "+
		"into each SSE event (`data: {\"sent_at\":\"...\",...}`), because OpenAI "+
		"chunks carry only whole seconds in `created`. NDJSON lines carry "+
		"`created_at`, which the node sets as it writes the line.\n\n"+
		"TTFB is the time from sending the request to the first chunk. Chunk "+
		"latency is the receive time minus the time the node wrote into the chunk "+
		"(`created_at` or `sent_at`), and added latency is a target's percentile "+
		"minus the direct connection's. Gap is the time between consecutive "+
		"chunks of a stream.\n\n"+
		"A stream sends about 66 chunks per second, so N streams ask for "+
		"about 66 N chunks per second, less the pauses between streams. A "+
		"chunks/s figure well below the direct row's means the set-up ran "+
		"out of CPU and the latencies include queueing for it. Machine busy "+
		"is the share of all CPUs in use during the phase, the nodes' and "+
		"the load generator's included: as it nears 100%%, chunks wait for "+
		"a CPU before any process can read them, and the tail latencies "+
		"grow with that wait rather than with a proxy's own work.\n",
		streamFleet.Nodes, tokensPerSec, tokensPerSec, streamFleet.Parallel, s.StreamRamp, s.StreamWindow)
}

// streamTable shows one case at one level: per-chunk latency, and what
// each proxy adds to the direct connection's at the same percentile.
func streamTable(c streamCase, level int, phases []streamPhase) report.Table {
	t := report.Table{
		Title: fmt.Sprintf("%s, %d streams", c.title, level),
		Header: []string{"target", "streams done", "chunks/s", "errors", "TTFB p50 ms", "TTFB p99 ms",
			"chunk p50 ms", "chunk p99 ms", "added p50 ms", "added p99 ms", "gap p99 ms",
			"proxy CPU µs per chunk", kernelHeader, "peak RSS MB", busyHeader, othersHeader},
	}
	direct, hasDirect := findStream(phases, harness.Direct)
	for _, p := range phases {
		addedP50, addedP99 := report.NA, report.NA
		if hasDirect && p.kind != harness.Direct {
			addedP50 = report.SignedMillis(p.res.ChunkLatency.P50 - direct.res.ChunkLatency.P50)
			addedP99 = report.SignedMillis(p.res.ChunkLatency.P99 - direct.res.ChunkLatency.P99)
		}
		row := append(streamCommonCells(p),
			report.Millis(p.res.ChunkLatency.P50), report.Millis(p.res.ChunkLatency.P99),
			addedP50, addedP99, report.Millis(p.res.Gap.P99))
		t.Rows = append(t.Rows, append(row, streamUsageCells(p)...))
	}
	return t
}

// streamCommonCells are the first cells of every stream row.
func streamCommonCells(p streamPhase) []string {
	return []string{
		p.kind,
		fmt.Sprintf("%d", p.res.Streams),
		fmt.Sprintf("%.0f", float64(p.res.Chunks)/p.res.Window.Seconds()),
		errorCell(p.res.Errors, p.res.FirstError),
		report.Millis(p.res.TTFB.P50),
		report.Millis(p.res.TTFB.P99),
	}
}

// streamUsageCells are the proxy's CPU per chunk, its peak RSS, the
// machine's busy share and the CPU share of other processes. The CPU
// time covers the ramp too, so it is divided by the chunks the proxy
// relayed over the whole phase, estimated from the window's chunk rate.
func streamUsageCells(p streamPhase) []string {
	if !p.use.ok {
		return []string{report.NA, report.NA, report.NA, busyCell(p.use), othersCell(p.use)}
	}
	return []string{
		fmt.Sprintf("%.1f", cpuPerChunk(p).Seconds()*1e6),
		fmt.Sprintf("%.1f", kernelShare(p.use)*cpuPerChunk(p).Seconds()*1e6),
		report.MB(p.use.peakRSSBytes),
		busyCell(p.use),
		othersCell(p.use),
	}
}

// kernelShare is the part of a phase's CPU time spent in the kernel.
func kernelShare(u usage) float64 {
	if u.cpu <= 0 {
		return 0
	}
	return float64(u.sys) / float64(u.cpu)
}

// cpuPerChunk estimates the proxy's CPU time per relayed chunk.
// NOTE: the chunks sent during the ramp are estimated as half the
// window's rate over the ramp, because workers start evenly within it.
func cpuPerChunk(p streamPhase) time.Duration {
	rate := float64(p.res.Chunks) / p.res.Window.Seconds()
	ramp := p.res.Elapsed - p.res.Window
	chunks := float64(p.res.Chunks) + rate*ramp.Seconds()/2
	if chunks == 0 {
		return 0
	}
	return time.Duration(float64(p.use.cpu) / chunks)
}

// addChunkGoal checks llmproxy's added p99 chunk latency.
func addChunkGoal(r *Run, c streamCase, level int, phases []streamPhase) {
	lp, okLP := findStream(phases, harness.LLMProxy)
	direct, okDirect := findStream(phases, harness.Direct)
	if !okLP || !okDirect {
		return
	}
	added := lp.res.ChunkLatency.P99 - direct.res.ChunkLatency.P99
	measured := report.SignedMillis(added) + " ms"
	// The other proxies' figures show how much of the added latency is
	// the machine's: they share its CPUs with the nodes and the load
	// generator in the same way.
	var others []string
	for _, kind := range []string{harness.Nginx, harness.HAProxy} {
		if p, ok := findStream(phases, kind); ok {
			others = append(others, kind+" "+report.SignedMillis(p.res.ChunkLatency.P99-direct.res.ChunkLatency.P99))
		}
	}
	if len(others) > 0 {
		measured += " (" + strings.Join(others, ", ") + ")"
	}
	r.AddGoal(report.Goal{
		Name:     fmt.Sprintf("p99 added latency per %s chunk at %d streams", c.format, level),
		Target:   "under 1 ms",
		Measured: measured,
		Met:      added < time.Millisecond,
	})
}

// addMemoryGoal checks llmproxy's peak RSS over the phases at the largest
// stream level.
func addMemoryGoal(r *Run, level int, phases []streamPhase) {
	var peak int64
	found := false
	for _, p := range phases {
		if p.kind == harness.LLMProxy && p.use.ok {
			peak = max(peak, p.use.peakRSSBytes)
			found = true
		}
	}
	if !found {
		return
	}
	r.AddGoal(report.Goal{
		Name:     fmt.Sprintf("peak RSS at %d streams", level),
		Target:   "under 100 MB",
		Measured: report.MB(peak) + " MB",
		Met:      peak < 100_000_000,
	})
}

func findStream(phases []streamPhase, kind string) (streamPhase, bool) {
	for _, p := range phases {
		if p.kind == kind {
			return p, true
		}
	}
	return streamPhase{}, false
}

func maxLevel(levels []int) int {
	m := 0
	for _, l := range levels {
		m = max(m, l)
	}
	return m
}
