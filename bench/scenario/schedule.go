package scenario

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/llmproxy/llmproxy/bench/harness"
	"github.com/llmproxy/llmproxy/bench/loadgen"
	"github.com/llmproxy/llmproxy/bench/report"
	"github.com/llmproxy/llmproxy/config"
)

// scheduleFleet is 4 nodes that can each hold one of 3 models at a time
// and pay 2 s to switch. Each has 2 slots per model and generates 50
// tokens per second after evaluating the prompt at 500 per second. So
// placement decides both the loads and how much of each prompt a node's
// cache already contains.
var scheduleFleet = harness.FleetSpec{
	Nodes:    4,
	Parallel: 2,
	MaxQueue: 4096,
	ExtraArgs: []string{
		"-models", strings.Join(scheduleModels, ","),
		"-max-loaded", "1",
		"-load-time", "2s",
		"-tokens-per-sec", "50",
		"-prompt-tokens-per-sec", "500",
	},
	Cold: true,
}

// scheduleModels are the models of the trace, and modelShares the share
// of conversations that use each: skewed, as traffic usually is.
var (
	scheduleModels = []string{"a", "b", "c"}
	modelShares    = []float64{0.6, 0.3, 0.1}
)

// classShares are the shares of conversations in each priority class of
// config.Classes: priority, standard, batch.
var classShares = []float64{0.2, 0.5, 0.3}

// schedulePolicies are the placement policies compared, in report order.
var schedulePolicies = []string{
	config.PolicyInferenceAware, config.PolicyLeastConn, config.PolicyRoundRobin,
}

// traceSeed seeds the trace, so that every policy meets the same one.
const traceSeed = 20260101

// The shape of a conversation: 1 to 5 turns, with a pause of 1 to 3 s
// between a response and the next turn. The system message has 150 words
// and is shared by the conversations of a model. The first user message
// has 80 words and later ones 20.
const (
	maxTurns       = 5
	minThink       = time.Second
	maxThink       = 3 * time.Second
	systemWords    = 150
	firstTurnWords = 80
	laterTurnWords = 20
)

// nodeConcurrency is llmproxy's max_concurrent per node: the nodes' slots
// for one model.
const nodeConcurrency = 2

// schedulePhase is one policy's run of the trace.
type schedulePhase struct {
	policy string
	turns  []loadgen.TurnResult
	// loads sums the cold loads of every node, from GET /_sim/stats.
	loads int64
	// queueWait is llmproxy_queue_wait_seconds by class.
	queueWait map[string]histogram
}

// runSchedule sends one seeded trace of multi-turn conversations through
// llmproxy with each placement policy, in front of a new cold fleet each
// time, and compares time to first token, model loads and throughput.
func runSchedule(ctx context.Context, r *Run) (report.Section, error) {
	s := r.Settings
	if !slices.Contains(s.Targets, harness.LLMProxy) {
		return report.Section{}, errors.New("the scheduler scenario needs the llmproxy target")
	}
	trace := scheduleTrace(s.TraceArrivals, s.TraceRate)
	var phases []schedulePhase
	for _, policy := range schedulePolicies {
		p, err := scheduleOnce(ctx, r, policy, trace)
		if err != nil {
			return report.Section{}, fmt.Errorf("%s: %w", policy, err)
		}
		phases = append(phases, p)
	}
	addScheduleGoals(r, phases)
	return report.Section{
		Title: "Scheduler trace",
		Intro: scheduleIntro(s, trace),
		Tables: []report.Table{
			schedulePolicyTable(phases),
			scheduleClassTable(phases),
		},
	}, nil
}

// scheduleOnce runs the trace through llmproxy with one policy.
func scheduleOnce(
	ctx context.Context,
	r *Run,
	policy string,
	trace []loadgen.Conversation,
) (schedulePhase, error) {
	s := r.Settings
	if err := waitQuiet(ctx, r); err != nil {
		return schedulePhase{}, err
	}
	fleet, err := harness.StartFleet(ctx, r.Env, scheduleFleet)
	if err != nil {
		return schedulePhase{}, err
	}
	defer fleet.Stop()
	opts := harness.Options{Policy: policy, MaxConnsPerNode: nodeConcurrency}
	t, err := harness.StartTargetWith(ctx, r.Env, harness.LLMProxy, fleet, opts)
	if err != nil {
		return schedulePhase{}, err
	}
	defer stopTarget(r, t)

	turns := loadgen.RunTrace(ctx, loadgen.Trace{
		BaseURL:       t.URLs[0],
		Conversations: trace,
		Deadline:      s.TraceArrivals + s.TraceDrain,
	})
	p := schedulePhase{policy: policy, turns: turns}
	stats, err := fleet.Stats(ctx)
	if err != nil {
		return schedulePhase{}, err
	}
	for _, st := range stats {
		for _, n := range st.Loads {
			p.loads += n
		}
	}
	p.queueWait, err = readHistograms(ctx, t.URLs[0]+"/metrics", "llmproxy_queue_wait_seconds", "class")
	return p, err
}

// scheduleTrace returns the conversations of the trace: Poisson arrivals
// at rate conversations per second for arrivals, each with its model,
// class, messages and pauses drawn from a generator seeded by traceSeed.
func scheduleTrace(arrivals time.Duration, rate float64) []loadgen.Conversation {
	rng := rand.New(rand.NewPCG(traceSeed, traceSeed))
	systems := make([]string, len(scheduleModels))
	for i := range systems {
		systems[i] = words(rng, systemWords)
	}
	var trace []loadgen.Conversation
	at := time.Duration(0)
	for {
		at += time.Duration(rng.ExpFloat64() / rate * float64(time.Second))
		if at >= arrivals {
			return trace
		}
		m := pick(rng, modelShares)
		c := loadgen.Conversation{
			Start:  at,
			Model:  scheduleModels[m],
			Class:  config.Classes[pick(rng, classShares)],
			System: systems[m],
		}
		turns := 1 + rng.IntN(maxTurns)
		for i := range turns {
			n := laterTurnWords
			if i == 0 {
				n = firstTurnWords
			}
			c.Turns = append(c.Turns, words(rng, n))
			if i > 0 {
				think := minThink + time.Duration(rng.Int64N(int64(maxThink-minThink)))
				c.Think = append(c.Think, think)
			}
		}
		trace = append(trace, c)
	}
}

// pick returns an index drawn with the given shares, which sum to 1.
func pick(rng *rand.Rand, shares []float64) int {
	x := rng.Float64()
	for i, s := range shares {
		if x < s {
			return i
		}
		x -= s
	}
	return len(shares) - 1
}

// traceWords are the words of the trace's messages.
var traceWords = strings.Fields(`the a of to and in is it for on with as at by from this that
be are was not or can will one all would there their what so up out if about who get which go
me when make like time no just him know take people into year your good some could them see
other than then now look only come its over think also back after use two how our work first
well way even new want because any these give day most us river stone garden lantern bridge
meadow harbor window silver forest valley candle thunder willow orchard pebble cloud rain snow
wind tower road field lake hill moon star question answer summary table report number list`)

// words returns n words drawn from traceWords, ended by a full stop.
func words(rng *rand.Rand, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(traceWords[rng.IntN(len(traceWords))])
	}
	b.WriteByte('.')
	return b.String()
}

// traceTurns counts the turns of a trace.
func traceTurns(trace []loadgen.Conversation) int {
	n := 0
	for _, c := range trace {
		n += len(c.Turns)
	}
	return n
}

func scheduleIntro(s Settings, trace []loadgen.Conversation) string {
	return fmt.Sprintf("llmproxy alone, once per placement policy, in front of %d "+
		"simulated nodes that start with no model loaded (`ollamasim %s -parallel %d`); "+
		"llmproxy has `max_concurrent: %d` per node and its default queue. The nodes "+
		"keep one model loaded at a time, so the 3 models do not all fit, and a switch "+
		"costs a 2 s load. Each slot keeps a prompt cache, so a turn sent to the node "+
		"that served the conversation's earlier turns evaluates only its new tokens.\n\n"+
		"The trace, seeded and the same for every policy: %d conversations (%d turns) "+
		"arriving as a Poisson process at %s per second for %s; models a, b and c in "+
		"60/30/10 proportion; X-Priority priority, standard and batch in 20/50/30 "+
		"proportion; 1 to %d turns, each a streamed `POST /api/chat` that re-sends the "+
		"conversation so far, the next turn %s to %s after the response. The "+
		"system message (%d words) is the same for all conversations of a model, the "+
		"first user message has %d words and later ones %d. The run ends when every "+
		"turn has its response or %s after the last arrival, and turns open then count as "+
		"unfinished.\n\n"+
		"TTFT is the time from sending a turn to the first line of its response. "+
		"Model loads sum `loads` of every node's `GET /_sim/stats`. Throughput is "+
		"completed turns per second from the first arrival to the last response. "+
		"Queue wait shows the bucket of llmproxy's `llmproxy_queue_wait_seconds` "+
		"histogram that holds the 95th percentile of the class's waits. The buckets "+
		"are wide (10 s to 30 s, for one), so the table gives the bucket and not an "+
		"interpolated value.\n",
		scheduleFleet.Nodes, strings.Join(scheduleFleet.ExtraArgs, " "), scheduleFleet.Parallel,
		nodeConcurrency, len(trace), traceTurns(trace),
		strconv.FormatFloat(s.TraceRate, 'f', -1, 64), s.TraceArrivals, maxTurns,
		minThink, maxThink, systemWords, firstTurnWords, laterTurnWords, s.TraceDrain)
}

// scheduleSummary is a policy's results over all turns.
type scheduleSummary struct {
	done, failed, unfinished int
	ttft                     loadgen.Summary
	promptTokens             int
	lastDone                 time.Duration
}

// summarizeTurns sums up the turns of class, or of every class when class
// is empty.
func summarizeTurns(turns []loadgen.TurnResult, class string) scheduleSummary {
	var s scheduleSummary
	var ttft []time.Duration
	for _, t := range turns {
		if class != "" && t.Class != class {
			continue
		}
		switch {
		case t.Err == nil:
			s.done++
			ttft = append(ttft, t.TTFT)
			s.promptTokens += t.PromptEvalCount
			s.lastDone = max(s.lastDone, t.Done)
		case errors.Is(t.Err, loadgen.ErrDeadline):
			s.unfinished++
		default:
			s.failed++
		}
	}
	s.ttft = loadgen.Summarize(ttft)
	return s
}

// firstTurnError returns the first error of a turn other than the
// deadline, or "" when there is none.
func firstTurnError(turns []loadgen.TurnResult) string {
	for _, t := range turns {
		if t.Err != nil && !errors.Is(t.Err, loadgen.ErrDeadline) {
			return t.Err.Error()
		}
	}
	return ""
}

// schedulePolicyTable shows each policy's totals.
func schedulePolicyTable(phases []schedulePhase) report.Table {
	t := report.Table{
		Title: "Per policy",
		Header: []string{"policy", "turns done", "errors", "unfinished", "TTFT p50 ms",
			"TTFT p95 ms", "TTFT max ms", "model loads", "prompt tokens evaluated",
			"turns/s", "last response s"},
	}
	for _, p := range phases {
		sum := summarizeTurns(p.turns, "")
		throughput := 0.0
		if sum.lastDone > 0 {
			throughput = float64(sum.done) / sum.lastDone.Seconds()
		}
		t.Rows = append(t.Rows, []string{
			p.policy,
			strconv.Itoa(sum.done),
			errorCell(int64(sum.failed), firstTurnError(p.turns)),
			strconv.Itoa(sum.unfinished),
			report.Millis(sum.ttft.P50),
			report.Millis(sum.ttft.P95),
			report.Millis(sum.ttft.Max),
			strconv.FormatInt(p.loads, 10),
			strconv.Itoa(sum.promptTokens),
			fmt.Sprintf("%.2f", throughput),
			fmt.Sprintf("%.1f", sum.lastDone.Seconds()),
		})
	}
	t.Note = "Prompt tokens evaluated sums `prompt_eval_count` of the responses: the " +
		"prompt tokens the nodes' caches did not hold. TTFT percentiles cover the " +
		"turns done."
	return t
}

// scheduleClassTable shows each policy's TTFT and queue wait per class.
func scheduleClassTable(phases []schedulePhase) report.Table {
	t := report.Table{
		Title: "Per priority class",
		Header: []string{"policy", "class", "turns done", "TTFT p50 ms", "TTFT p95 ms",
			"queue wait p95 within"},
	}
	for _, p := range phases {
		for _, class := range config.Classes {
			sum := summarizeTurns(p.turns, class)
			wait := report.NA
			if lower, upper, ok := p.queueWait[class].quantileBucket(0.95); ok {
				wait = bucketCell(lower, upper)
			}
			t.Rows = append(t.Rows, []string{
				p.policy,
				class,
				strconv.Itoa(sum.done),
				report.Millis(sum.ttft.P50),
				report.Millis(sum.ttft.P95),
				wait,
			})
		}
	}
	return t
}

// addScheduleGoals compares inference_aware with round_robin.
func addScheduleGoals(r *Run, phases []schedulePhase) {
	var ia, rr *schedulePhase
	for i := range phases {
		switch phases[i].policy {
		case config.PolicyInferenceAware:
			ia = &phases[i]
		case config.PolicyRoundRobin:
			rr = &phases[i]
		}
	}
	if ia == nil || rr == nil {
		return
	}
	iaTTFT := summarizeTurns(ia.turns, "").ttft.P95
	rrTTFT := summarizeTurns(rr.turns, "").ttft.P95
	r.AddGoal(report.Goal{
		Name:   "p95 TTFT, inference_aware vs round_robin",
		Target: "at most 0.5",
		Measured: fmt.Sprintf("%s vs %s ms (%s)", report.Millis(iaTTFT), report.Millis(rrTTFT),
			report.Ratio(iaTTFT.Seconds(), rrTTFT.Seconds())),
		Met: rrTTFT > 0 && 2*iaTTFT <= rrTTFT,
	})
	r.AddGoal(report.Goal{
		Name:   "model loads, inference_aware vs round_robin",
		Target: "at most 0.2",
		Measured: fmt.Sprintf("%d vs %d (%s)", ia.loads, rr.loads,
			report.Ratio(float64(ia.loads), float64(rr.loads))),
		Met: rr.loads > 0 && 5*ia.loads <= rr.loads,
	})
}

// bucketCell formats histogram bucket bounds in seconds, such as "1–2.5 s".
func bucketCell(lower, upper float64) string {
	format := func(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }
	if math.IsInf(upper, 1) {
		return "over " + format(lower) + " s"
	}
	return format(lower) + "–" + format(upper) + " s"
}
