package scenario

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/bench/harness"
)

// fakePhase is a phase result with a chosen disturbance.
type fakePhase struct {
	kind   string
	round  int
	others float64
}

func (p fakePhase) disturbance() float64 { return p.others }

func TestInRoundsKeepsLeastDisturbedRound(t *testing.T) {
	r := &Run{Settings: Settings{Rounds: 3, Targets: []string{harness.Direct, harness.LLMProxy}}}
	// others[kind][round]: direct is quietest in round 2, llmproxy in round 3.
	others := map[string][]float64{
		harness.Direct:   {0.5, 0.1, 0.3},
		harness.LLMProxy: {0.4, 0.4, 0.2},
	}
	var order []string
	got, err := inRounds(context.Background(), r, r.Settings.Targets, func(kind string) (fakePhase, error) {
		order = append(order, kind)
		return fakePhase{kind: kind, round: r.round, others: others[kind][r.round-1]}, nil
	})
	if err != nil {
		t.Fatalf("inRounds: %v", err)
	}
	if len(order) != 6 || order[0] != harness.Direct || order[1] != harness.LLMProxy {
		t.Errorf("order = %v, want the targets taking turns for 3 rounds", order)
	}
	if got[0].round != 2 {
		t.Errorf("direct kept round %d, want 2", got[0].round)
	}
	if got[1].round != 3 {
		t.Errorf("llmproxy kept round %d, want 3", got[1].round)
	}
}

func TestDefaultSettingsQuickIsSmaller(t *testing.T) {
	full, quick := DefaultSettings(false), DefaultSettings(true)
	if quick.Saturation >= full.Saturation || quick.StreamWindow >= full.StreamWindow {
		t.Error("quick phases are not shorter than full ones")
	}
	if quick.FailureWindow >= full.FailureWindow || quick.CacheRequests >= full.CacheRequests {
		t.Error("quick failure and cache phases are not smaller than full ones")
	}
	if maxLevel(quick.StreamLevels) != 100 {
		t.Errorf("quick stream levels = %v, want 100 only", quick.StreamLevels)
	}
	if maxLevel(full.StreamLevels) != 1000 {
		t.Errorf("full stream levels = %v, want up to 1000", full.StreamLevels)
	}
}

func TestQuantileBucketFindsRank(t *testing.T) {
	h := histogram{
		bounds: []float64{0.1, 1, 10, math.Inf(1)},
		counts: []float64{50, 90, 99, 100},
		count:  100,
	}
	tests := []struct {
		q            float64
		lower, upper float64
	}{
		{0.5, 0, 0.1},
		{0.9, 0.1, 1},
		{0.95, 1, 10},
		{1, 10, math.Inf(1)},
	}
	for _, tt := range tests {
		lower, upper, ok := h.quantileBucket(tt.q)
		if !ok || lower != tt.lower || upper != tt.upper {
			t.Errorf("quantileBucket(%v) = %v, %v, %v, want %v, %v, true",
				tt.q, lower, upper, ok, tt.lower, tt.upper)
		}
	}
	if _, _, ok := (histogram{}).quantileBucket(0.95); ok {
		t.Error("quantileBucket of an empty histogram reports ok")
	}
}

func TestReadHistogramsParsesBuckets(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `# TYPE llmproxy_queue_wait_seconds histogram
llmproxy_queue_wait_seconds_bucket{class="batch",le="0.5"} 2
llmproxy_queue_wait_seconds_bucket{class="batch",le="1"} 3
llmproxy_queue_wait_seconds_bucket{class="batch",le="+Inf"} 4
llmproxy_queue_wait_seconds_sum{class="batch"} 9
llmproxy_queue_wait_seconds_count{class="batch"} 4
llmproxy_queue_wait_seconds_bucket{class="priority",le="0.5"} 1
llmproxy_queue_wait_seconds_bucket{class="priority",le="1"} 1
llmproxy_queue_wait_seconds_bucket{class="priority",le="+Inf"} 1
`)
	}))
	defer srv.Close()
	got, err := readHistograms(context.Background(), srv.URL, "llmproxy_queue_wait_seconds", "class")
	if err != nil {
		t.Fatalf("readHistograms: %v", err)
	}
	if len(got) != 2 {
		t.Fatalf("series = %d, want 2 (batch, priority)", len(got))
	}
	batch := got["batch"]
	if batch.count != 4 || len(batch.bounds) != 3 || !math.IsInf(batch.bounds[2], 1) {
		t.Errorf("batch = %+v, want 3 buckets ending at +Inf and a count of 4", batch)
	}
	if lower, upper, _ := batch.quantileBucket(0.95); lower != 1 || !math.IsInf(upper, 1) {
		t.Errorf("batch p95 bucket = %v–%v, want 1–+Inf", lower, upper)
	}
}

func TestParseGoBenchReadsUnits(t *testing.T) {
	out := `goos: linux
pkg: github.com/llmproxy/llmproxy/cache
BenchmarkKey-2   	   20000	      3392 ns/op	 128.53 MB/s	     808 B/op	      19 allocs/op
PASS
pkg: github.com/llmproxy/llmproxy/proxy
BenchmarkClassifyInspect-2   	   20000	       533.0 ns/op	      48 B/op	       3 allocs/op
ok  	github.com/llmproxy/llmproxy/proxy	0.025s
`
	got := parseGoBench(out)
	want := []goBenchLine{
		{pkg: "cache", name: "BenchmarkKey-2", nsPerOp: "3392", bytesPerOp: "808", allocs: "19"},
		{pkg: "proxy", name: "BenchmarkClassifyInspect-2", nsPerOp: "533.0", bytesPerOp: "48", allocs: "3"},
	}
	if len(got) != len(want) {
		t.Fatalf("lines = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestScheduleTraceIsSeeded(t *testing.T) {
	a := scheduleTrace(60*time.Second, 1)
	b := scheduleTrace(60*time.Second, 1)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("two traces with the same settings differ")
	}
	if len(a) < 30 || len(a) > 90 {
		t.Errorf("conversations = %d, want about 60 for 60 s at 1 per second", len(a))
	}
	for i, c := range a {
		if len(c.Turns) < 1 || len(c.Turns) > maxTurns || len(c.Think) != len(c.Turns)-1 {
			t.Errorf("conversation %d: %d turns and %d pauses, want 1..%d turns and one pause fewer",
				i, len(c.Turns), len(c.Think), maxTurns)
		}
		if c.Start < 0 || c.Start >= 60*time.Second {
			t.Errorf("conversation %d starts at %v, outside the 60 s of arrivals", i, c.Start)
		}
		if i > 0 && c.Start < a[i-1].Start {
			t.Errorf("conversation %d starts before conversation %d", i, i-1)
		}
	}
}

func TestPickFollowsShares(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	counts := make([]int, len(modelShares))
	const n = 10000
	for range n {
		counts[pick(rng, modelShares)]++
	}
	for i, share := range modelShares {
		if got := float64(counts[i]) / n; math.Abs(got-share) > 0.02 {
			t.Errorf("share of model %d = %.3f, want %.2f", i, got, share)
		}
	}
}

func TestZipfInputsAreSkewed(t *testing.T) {
	inputs := zipfInputs(10000, 2000)
	if !reflect.DeepEqual(inputs, zipfInputs(10000, 2000)) {
		t.Fatal("two draws with the same seed differ")
	}
	counts := map[string]int{}
	for _, in := range inputs {
		counts[in]++
	}
	if len(counts) > 2000 {
		t.Errorf("distinct inputs = %d, want at most 2000", len(counts))
	}
	if counts["document 0"] < counts["document 100"] {
		t.Errorf("the first input was drawn %d times, less than the 101st (%d)",
			counts["document 0"], counts["document 100"])
	}
}

func TestKindsCellSortsKinds(t *testing.T) {
	got := kindsCell(map[string]int64{"transport": 3, "status 500": 12})
	if want := "status 500: 12, transport: 3"; got != want {
		t.Errorf("kindsCell = %q, want %q", got, want)
	}
	if got := kindsCell(nil); got != "–" {
		t.Errorf("kindsCell(nil) = %q, want –", got)
	}
}

func TestBucketCellFormatsBounds(t *testing.T) {
	if got := bucketCell(10, 30); got != "10–30 s" {
		t.Errorf("bucketCell(10, 30) = %q", got)
	}
	if got := bucketCell(300, math.Inf(1)); got != "over 300 s" {
		t.Errorf("bucketCell(300, +Inf) = %q", got)
	}
}

func TestGoBenchTableTakesMedian(t *testing.T) {
	runs := []goBenchLine{
		{pkg: "cache", name: "BenchmarkKey-2", nsPerOp: "5000", bytesPerOp: "808", allocs: "19"},
		{pkg: "cache", name: "BenchmarkKey-2", nsPerOp: "3000", bytesPerOp: "808", allocs: "19"},
		{pkg: "cache", name: "BenchmarkKey-2", nsPerOp: "4000", bytesPerOp: "809", allocs: "19"},
	}
	table := goBenchTable([]string{"cache BenchmarkKey-2"},
		map[string][]goBenchLine{"cache BenchmarkKey-2": runs})
	if len(table.Rows) != 1 {
		t.Fatalf("rows = %v, want one", table.Rows)
	}
	want := []string{"cache", "BenchmarkKey-2", "4000", "3000–5000", "809", "19"}
	if !reflect.DeepEqual(table.Rows[0], want) {
		t.Errorf("row = %v, want %v", table.Rows[0], want)
	}
}
