package scenario

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/llmproxy/llmproxy/bench/harness"
	"github.com/llmproxy/llmproxy/bench/loadgen"
	"github.com/llmproxy/llmproxy/bench/report"
	"github.com/llmproxy/llmproxy/cache"
)

// embedModel is the embedding model of the cache scenario.
const embedModel = "nomic-embed-text"

// cacheFleet is two unpaced nodes that serve Model and embedModel.
var cacheFleet = harness.FleetSpec{
	Nodes:     2,
	Parallel:  256,
	MaxQueue:  4096,
	ExtraArgs: []string{"-models", harness.Model + "," + embedModel},
}

// cacheHeader is the response header in which llmproxy reports how the
// cache served a request.
const cacheHeader = "X-LLMProxy-Cache"

// zipfExponent is the s parameter of the repeated-embedding workload:
// the k-th most common input is drawn in proportion to 1/k^1.1.
const zipfExponent = 1.1

// cacheWorkers is the concurrent senders of the repeated-embedding
// workload.
const cacheWorkers = 8

// cacheSeed seeds the draws of the repeated-embedding workload.
const cacheSeed = 7

// tierLatency is the latency of one way of serving a request.
type tierLatency struct {
	label string
	// want is the X-LLMProxy-Cache value every response should carry.
	want cache.Result
	// through names the instance the requests went to.
	through string
	lat     loadgen.Summary
	// other counts responses with another header value.
	other int
}

// zipfResult is the outcome of the repeated-embedding workload.
type zipfResult struct {
	requests int
	distinct int
	results  map[string]int
	// nodeRequests counts the /api/embed requests the nodes received.
	nodeRequests int64
	errors       int64
	firstError   string
	lat          loadgen.Summary
}

// runCache measures llmproxy's two cache tiers with two instances that
// share one redis-server: the latency of a miss, an L2 hit and an L1 hit,
// then the hit rate of a repeated-embedding workload.
func runCache(ctx context.Context, r *Run) (report.Section, error) {
	if !slices.Contains(r.Settings.Targets, harness.LLMProxy) {
		return report.Section{}, errors.New("the cache scenario needs the llmproxy target")
	}
	fleet, err := harness.StartFleet(ctx, r.Env, cacheFleet)
	if err != nil {
		return report.Section{}, err
	}
	defer fleet.Stop()
	redis, err := harness.StartRedis(ctx, r.Env)
	if err != nil {
		return report.Section{}, err
	}
	defer redis.Proc.Stop()
	a, err := startCacheInstance(ctx, r, fleet, redis, "llmproxy-a")
	if err != nil {
		return report.Section{}, err
	}
	defer stopTarget(r, a)
	b, err := startCacheInstance(ctx, r, fleet, redis, "llmproxy-b")
	if err != nil {
		return report.Section{}, err
	}
	defer stopTarget(r, b)

	if err := waitQuiet(ctx, r); err != nil {
		return report.Section{}, err
	}
	tiers, err := measureTiers(a, b, r.Settings.CacheProbes)
	if err != nil {
		return report.Section{}, err
	}
	if err := waitQuiet(ctx, r); err != nil {
		return report.Section{}, err
	}
	zr, err := runZipf(ctx, r.Settings, fleet, a, b)
	if err != nil {
		return report.Section{}, err
	}
	return report.Section{
		Title:  "Cache",
		Intro:  cacheIntro(r.Settings),
		Tables: []report.Table{tierTable(tiers), zipfTable(r.Settings, zr)},
	}, nil
}

// startCacheInstance starts an llmproxy with the cache on and Redis as
// its L2 tier.
func startCacheInstance(ctx context.Context, r *Run, fleet *harness.Fleet, redis *harness.Redis,
	name string) (*harness.Target, error) {
	opts := harness.Options{Name: name, Cache: true, RedisAddr: redis.Addr}
	return harness.StartTargetWith(ctx, r.Env, harness.LLMProxy, fleet, opts)
}

// embedRequest returns an /api/embed request for one input.
func embedRequest(input string) loadgen.Request {
	body, _ := json.Marshal(map[string]string{"model": embedModel, "input": input})
	return loadgen.Request{Path: "/api/embed", Body: body}
}

// measureTiers sends n distinct embedding requests three times, one at a
// time. Instance a misses and stores each response in its memory and in
// Redis, then b finds it in Redis, then b finds it in its own memory.
func measureTiers(a, b *harness.Target, n int) ([]tierLatency, error) {
	tiers := []tierLatency{
		{label: "miss (node)", want: cache.ResultMiss, through: "A"},
		{label: "L2 hit (Redis)", want: cache.ResultHitL2, through: "B"},
		{label: "L1 hit (memory)", want: cache.ResultHitL1, through: "B"},
	}
	targets := map[string]*harness.Target{"A": a, "B": b}
	for i := range tiers {
		tier := &tiers[i]
		client, err := loadgen.NewClient(targets[tier.through].URLs, 1)
		if err != nil {
			return nil, err
		}
		latencies := make([]time.Duration, 0, n)
		for j := range n {
			req := embedRequest("latency probe " + strconv.Itoa(j))
			start := time.Now()
			got, err := client.DoHeader(req, cacheHeader)
			if err != nil {
				client.Close()
				return nil, fmt.Errorf("%s through %s: %w", tier.label, tier.through, err)
			}
			latencies = append(latencies, time.Since(start))
			if got != string(tier.want) {
				tier.other++
			}
		}
		client.Close()
		tier.lat = loadgen.Summarize(latencies)
	}
	return tiers, nil
}

// runZipf sends the repeated-embedding workload through a and b in turn
// and counts how the cache served it.
func runZipf(ctx context.Context, s Settings, fleet *harness.Fleet,
	a, b *harness.Target) (zipfResult, error) {
	inputs := zipfInputs(s.CacheRequests, s.CacheInputs)
	before, err := embedRequests(ctx, fleet)
	if err != nil {
		return zipfResult{}, err
	}
	client, err := loadgen.NewClient(append(a.URLs, b.URLs...), cacheWorkers)
	if err != nil {
		return zipfResult{}, err
	}
	defer client.Close()

	zr := zipfResult{requests: len(inputs), results: map[string]int{}}
	var mu sync.Mutex
	var latencies []time.Duration
	var wg sync.WaitGroup
	for w := range cacheWorkers {
		wg.Go(func() {
			for i := w; i < len(inputs) && ctx.Err() == nil; i += cacheWorkers {
				start := time.Now()
				got, err := client.DoHeader(embedRequest(inputs[i]), cacheHeader)
				lat := time.Since(start)
				mu.Lock()
				if err != nil {
					zr.errors++
					if zr.firstError == "" {
						zr.firstError = err.Error()
					}
				} else {
					zr.results[got]++
					latencies = append(latencies, lat)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	zr.lat = loadgen.Summarize(latencies)
	zr.distinct = countDistinct(inputs)

	after, err := embedRequests(ctx, fleet)
	if err != nil {
		return zipfResult{}, err
	}
	zr.nodeRequests = after - before
	return zr, nil
}

// zipfInputs draws n inputs from k strings with Zipf's law, from a
// generator seeded by cacheSeed.
func zipfInputs(n, k int) []string {
	rng := rand.New(rand.NewPCG(cacheSeed, cacheSeed))
	z := rand.NewZipf(rng, zipfExponent, 1, uint64(k-1))
	inputs := make([]string, n)
	for i := range inputs {
		inputs[i] = "document " + strconv.FormatUint(z.Uint64(), 10)
	}
	return inputs
}

func countDistinct(inputs []string) int {
	seen := map[string]bool{}
	for _, in := range inputs {
		seen[in] = true
	}
	return len(seen)
}

// embedRequests sums the /api/embed requests every node received.
func embedRequests(ctx context.Context, fleet *harness.Fleet) (int64, error) {
	stats, err := fleet.Stats(ctx)
	if err != nil {
		return 0, err
	}
	var n int64
	for _, st := range stats {
		n += st.Requests["/api/embed"]
	}
	return n, nil
}

func cacheIntro(s Settings) string {
	return fmt.Sprintf("Two llmproxy instances, A and B, share one redis-server started on "+
		"127.0.0.1 with `--save \"\" --appendonly no`, in front of %d simulated nodes "+
		"that respond at once. Both have the default cache settings (L1 in memory, "+
		"L2 in Redis) and every request is `POST /api/embed` with model `%s` and one "+
		"input string. The `%s` response header reports how each request was served.\n\n"+
		"Tier latency: %d distinct inputs are sent one at a time, over one "+
		"keep-alive connection, first through A (misses, which store the responses in "+
		"A's memory and in Redis), then through B (L2 hits, which B also keeps in "+
		"memory), then through B again (L1 hits). Latency is from sending a request "+
		"to reading its whole response.\n\n"+
		"Hit rate: %d requests from %d workers, sent to A and B in turn, draw their "+
		"input from %d strings with Zipf's law (s = %.1f, seeded); node requests "+
		"count the `/api/embed` requests in the nodes' `GET /_sim/stats`.\n",
		cacheFleet.Nodes, embedModel, cacheHeader, s.CacheProbes,
		s.CacheRequests, cacheWorkers, s.CacheInputs, zipfExponent)
}

// tierTable shows the latency of each way of serving a request.
func tierTable(tiers []tierLatency) report.Table {
	t := report.Table{
		Title: "Latency by tier",
		Header: []string{"served as", "through", "requests", "other header value",
			"p50 ms", "p99 ms", "max ms"},
	}
	for _, tier := range tiers {
		t.Rows = append(t.Rows, []string{
			tier.label,
			tier.through,
			strconv.Itoa(tier.lat.Count),
			strconv.Itoa(tier.other),
			report.Millis(tier.lat.P50),
			report.Millis(tier.lat.P99),
			report.Millis(tier.lat.Max),
		})
	}
	t.Note = "\"Other header value\" counts responses whose header was not the " +
		"expected one, such as a miss where an L2 hit was expected."
	return t
}

// zipfTable shows the hit rate of the repeated-embedding workload.
func zipfTable(s Settings, zr zipfResult) report.Table {
	hits := zr.results[string(cache.ResultHitL1)] + zr.results[string(cache.ResultHitL2)]
	saved := int64(zr.requests) - zr.nodeRequests
	t := report.Table{
		Title: fmt.Sprintf("Hit rate, %d embedding requests over %d strings", s.CacheRequests,
			s.CacheInputs),
		Header: []string{"requests", "distinct inputs", "hit-l1", "hit-l2", "miss", "errors",
			"hit rate", "best possible", "node requests", "node requests saved", "p50 ms", "p99 ms"},
		Rows: [][]string{{
			strconv.Itoa(zr.requests),
			strconv.Itoa(zr.distinct),
			strconv.Itoa(zr.results[string(cache.ResultHitL1)]),
			strconv.Itoa(zr.results[string(cache.ResultHitL2)]),
			strconv.Itoa(zr.results[string(cache.ResultMiss)]),
			errorCell(zr.errors, zr.firstError),
			percent(hits, zr.requests),
			percent(zr.requests-zr.distinct, zr.requests),
			strconv.FormatInt(zr.nodeRequests, 10),
			fmt.Sprintf("%d (%s)", saved, percent(int(saved), zr.requests)),
			report.Millis(zr.lat.P50),
			report.Millis(zr.lat.P99),
		}},
	}
	t.Note = "Best possible is the hit rate of a cache that keeps every response and " +
		"shares it at once: every request but the first of each input hits. Two " +
		"identical requests in flight at once are coalesced into one node request, " +
		"and both count as misses, so node requests saved can exceed hits."
	return t
}

// percent formats part/whole as a percentage with one decimal.
func percent(part, whole int) string {
	if whole == 0 {
		return report.NA
	}
	return fmt.Sprintf("%.1f%%", 100*float64(part)/float64(whole))
}
