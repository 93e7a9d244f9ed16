package cache

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testredis"
)

// chatPlan returns the plan of a deterministic chat request for model
// whose message is text.
func chatPlan(t *testing.T, tc *testCache, model, text string) Plan {
	t.Helper()
	return tc.plan(t, "/api/chat", fmt.Sprintf(
		`{"model":%q,"messages":[{"role":"user","content":%q}],"options":{"temperature":0}}`, model, text))
}

func TestLookupL1Hit(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	p := chatPlan(t, tc, "tiny", "hi")
	if e, res := tc.Lookup(context.Background(), p); e != nil || res != ResultMiss {
		t.Fatalf("Lookup before Store = %v, %s, want nil, miss", e, res)
	}
	tc.store(t, p, readTestdata(t, "chat_stream.body"))
	e, res := tc.Lookup(context.Background(), p)
	if e == nil || res != ResultHitL1 {
		t.Fatalf("Lookup after Store = %v, %s, want an entry, hit-l1", e, res)
	}
	if got := tc.requests(tierL1, outcomeHit); got != 1 {
		t.Errorf("l1 hits = %v, want 1", got)
	}
	if got := tc.requests(tierL1, outcomeMiss); got != 1 {
		t.Errorf("l1 misses = %v, want 1", got)
	}
	if got := testutil.ToFloat64(tc.metrics.CacheBytes.WithLabelValues(tierL1)); got <= 0 {
		t.Errorf("l1 bytes = %v, want the stored entry's size", got)
	}
}

func TestL2HitFillsL1(t *testing.T) {
	srv := testredis.Start(t)
	a := newTestCache(t, testOptions{redis: srv})
	b := newTestCache(t, testOptions{redis: srv})
	pa := chatPlan(t, a, "tiny", "hi")
	a.store(t, pa, readTestdata(t, "chat_nostream.body"))

	pb := chatPlan(t, b, "tiny:latest", "hi")
	e, res := b.Lookup(context.Background(), pb)
	if e == nil || res != ResultHitL2 {
		t.Fatalf("Lookup through the second instance = %v, %s, want an entry, hit-l2", e, res)
	}
	if got := b.requests(tierL2, outcomeHit); got != 1 {
		t.Errorf("l2 hits = %v, want 1", got)
	}
	if _, res := b.Lookup(context.Background(), pb); res != ResultHitL1 {
		t.Errorf("second Lookup = %s, want hit-l1 after the L2 hit filled L1", res)
	}
	body, _ := e.Render(pb)
	if want := `"model":"tiny:latest"`; !bytes.Contains(body, []byte(want)) {
		t.Errorf("rendered response %s does not name the model as this client sent it", body)
	}
}

func TestL2Disabled(t *testing.T) {
	srv := testredis.Start(t)
	a := newTestCache(t, testOptions{redis: srv, cfg: config.Cache{L2: config.CacheL2{Enabled: boolPtr(false)}}})
	b := newTestCache(t, testOptions{redis: srv})
	a.store(t, chatPlan(t, a, "tiny", "hi"), readTestdata(t, "chat_nostream.body"))
	if _, res := b.Lookup(context.Background(), chatPlan(t, b, "tiny", "hi")); res != ResultMiss {
		t.Errorf("Lookup through another instance = %s, want miss with l2 disabled", res)
	}
}

func TestNoCacheNoStore(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	body := []byte(`{"model":"tiny","messages":[{"role":"user","content":"hi"}],"options":{"temperature":0}}`)
	response := readTestdata(t, "chat_nostream.body")

	noStore := tc.Classify(Request{Route: "/api/chat", Body: body, NoStore: true})
	if e := tc.store(t, noStore, response); e == nil {
		t.Fatal("Store with no-store returned no entry for coalesced requests")
	}
	plain := tc.Classify(Request{Route: "/api/chat", Body: body})
	if _, res := tc.Lookup(context.Background(), plain); res != ResultMiss {
		t.Fatalf("Lookup after a no-store Store = %s, want miss", res)
	}

	tc.store(t, plain, response)
	noCache := tc.Classify(Request{Route: "/api/chat", Body: body, NoCache: true})
	if e, res := tc.Lookup(context.Background(), noCache); e != nil || res != ResultBypass {
		t.Errorf("Lookup with no-cache = %v, %s, want nil, bypass", e, res)
	}
	if got := tc.requests(tierL1, outcomeBypass); got != 1 {
		t.Errorf("bypass count = %v, want 1", got)
	}

	// no-cache still stores: a fresh response replaces the cached one.
	tc.store(t, noCache, readTestdata(t, "chat_stream.body"))
	e, _ := tc.Lookup(context.Background(), plain)
	if e == nil || e.response.Text[:7] != " dreams" {
		t.Errorf("response stored by a no-cache request was not kept")
	}
}

func TestPurge(t *testing.T) {
	srv := testredis.Start(t)
	a := newTestCache(t, testOptions{redis: srv})
	b := newTestCache(t, testOptions{redis: srv})
	response := readTestdata(t, "chat_nostream.body")
	ctx := context.Background()
	for _, model := range []string{"tiny", "tiny2"} {
		for _, text := range []string{"one", "two"} {
			a.store(t, chatPlan(t, a, model, text), response)
		}
	}
	embed := a.plan(t, "/api/embed", `{"model":"tiny","input":["x"]}`)
	if _, err := a.StoreEmbeddings(ctx, a.LookupEmbeddings(ctx, embed),
		[]byte(`{"model":"tiny","embeddings":[[0.5,0.25]]}`)); err != nil {
		t.Fatalf("StoreEmbeddings: %v", err)
	}

	if err := a.Purge(ctx, "tiny"); err != nil {
		t.Fatalf("Purge(tiny): %v", err)
	}
	for _, text := range []string{"one", "two"} {
		if _, res := a.Lookup(ctx, chatPlan(t, a, "tiny", text)); res != ResultMiss {
			t.Errorf("tiny %q after its purge: %s, want miss in both tiers", text, res)
		}
		if _, res := b.Lookup(ctx, chatPlan(t, b, "tiny2", text)); res != ResultHitL2 {
			t.Errorf("tiny2 %q after purging tiny: %s, want hit-l2", text, res)
		}
		if _, res := a.Lookup(ctx, chatPlan(t, a, "tiny2", text)); res != ResultHitL1 {
			t.Errorf("tiny2 %q in L1 after purging tiny: %s, want hit-l1", text, res)
		}
	}
	if res := a.LookupEmbeddings(ctx, embed).Result(); res != ResultMiss {
		t.Errorf("embedding of tiny after its purge: %s, want miss", res)
	}

	if err := a.Purge(ctx, ""); err != nil {
		t.Fatalf("Purge all: %v", err)
	}
	for _, text := range []string{"one", "two"} {
		if _, res := a.Lookup(ctx, chatPlan(t, a, "tiny2", text)); res != ResultMiss {
			t.Errorf("tiny2 %q after purging all: %s, want miss", text, res)
		}
	}
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer rdb.Close()
	if keys, err := rdb.Keys(ctx, "test:cache:*").Result(); err != nil || len(keys) != 0 {
		t.Errorf("Redis keys after purging all = %v (%v), want none", keys, err)
	}
	if got := testutil.ToFloat64(a.metrics.CacheEvictions); got != 0 {
		t.Errorf("evictions after purges = %v, want 0: a purge is not an eviction", got)
	}
}

func TestEvictionCounted(t *testing.T) {
	const maxBytes = 8 << 10
	tc := newTestCache(t, testOptions{cfg: config.Cache{L1: config.CacheL1{MaxBytes: maxBytes}}})
	response := readTestdata(t, "chat_nostream.body")
	for i := range 100 {
		tc.store(t, chatPlan(t, tc, "tiny", fmt.Sprint("question ", i)), response)
	}
	if got := testutil.ToFloat64(tc.metrics.CacheEvictions); got == 0 {
		t.Error("no eviction counted after storing far more than l1.max_bytes")
	}
	if got := testutil.ToFloat64(tc.metrics.CacheBytes.WithLabelValues(tierL1)); got <= 0 || got > maxBytes {
		t.Errorf("l1 bytes = %v, want within (0, %d]", got, maxBytes)
	}
}

// downTimeout bounds each call to a stopped Redis, which go-redis retries
// until the call's deadline.
const downTimeout = 200 * time.Millisecond

func TestRedisDownThenBack(t *testing.T) {
	srv := testredis.Start(t)
	tc := newTestCache(t, testOptions{redis: srv, redisTimeout: downTimeout})
	ctx := context.Background()
	response := readTestdata(t, "chat_nostream.body")
	before := chatPlan(t, tc, "tiny", "before")
	tc.store(t, before, response)
	if got := testutil.ToFloat64(tc.metrics.RedisUp); got != 1 {
		t.Fatalf("redis_up = %v while Redis runs, want 1", got)
	}

	srv.Stop()
	if _, res := tc.Lookup(ctx, before); res != ResultHitL1 {
		t.Errorf("Lookup of an L1 entry with Redis down: %s, want hit-l1", res)
	}
	during := chatPlan(t, tc, "tiny", "during")
	if _, res := tc.Lookup(ctx, during); res != ResultMiss {
		t.Errorf("Lookup missing from L1 with Redis down: %s, want miss", res)
	}
	tc.store(t, during, response)
	if _, res := tc.Lookup(ctx, during); res != ResultHitL1 {
		t.Errorf("entry stored with Redis down: %s, want hit-l1", res)
	}
	tc.clock.Advance(redisRetryInterval)
	if _, res := tc.Lookup(ctx, chatPlan(t, tc, "tiny", "probe")); res != ResultMiss {
		t.Errorf("Lookup probing a stopped Redis: %s, want miss", res)
	}

	if got := testutil.ToFloat64(tc.metrics.RedisFallback.WithLabelValues("cache")); got < 3 {
		t.Errorf("redis fallbacks = %v, want one per skipped or failed call (at least 3)", got)
	}
	if got := testutil.ToFloat64(tc.metrics.RedisUp); got != 0 {
		t.Errorf("redis_up = %v with Redis down, want 0", got)
	}
	if got := tc.requests(tierL2, outcomeError); got < 2 {
		t.Errorf("l2 errors = %v, want at least 2", got)
	}
	const downMsg = "redis unavailable, cache continues with l1 only"
	if n := tc.logs.count(slog.LevelWarn, downMsg); n != 1 {
		t.Errorf("warnings = %d, want exactly 1 per outage", n)
	}

	srv.Restart(t)
	tc.clock.Advance(redisRetryInterval)
	after := chatPlan(t, tc, "tiny", "after")
	tc.store(t, after, response)
	if n := tc.logs.count(slog.LevelInfo, "redis reachable again, cache l2 resumed"); n != 1 {
		t.Errorf("recovery logs = %d, want 1", n)
	}
	if got := testutil.ToFloat64(tc.metrics.RedisUp); got != 1 {
		t.Errorf("redis_up = %v after recovery, want 1", got)
	}
	other := newTestCache(t, testOptions{redis: srv})
	if _, res := other.Lookup(ctx, chatPlan(t, other, "tiny", "after")); res != ResultHitL2 {
		t.Errorf("entry stored after recovery, read by another instance: %s, want hit-l2", res)
	}
}

// TestRedisCheckWithoutLookups stops and restarts Redis while the cache
// gets no lookup. The periodic check must report both changes, and L2
// must serve again right after the restart.
func TestRedisCheckWithoutLookups(t *testing.T) {
	srv := testredis.Start(t)
	tc := newTestCache(t, testOptions{redis: srv, checkInterval: 10 * time.Millisecond})
	ctx := context.Background()
	response := readTestdata(t, "chat_nostream.body")
	stored := chatPlan(t, tc, "tiny", "stored")
	tc.store(t, stored, response)
	srv.Save(t)
	up := func() float64 { return testutil.ToFloat64(tc.metrics.RedisUp) }

	const downMsg = "redis unavailable, cache continues with l1 only"
	warnings := func() int { return tc.logs.count(slog.LevelWarn, downMsg) }
	srv.Stop()
	// The gauge changes just before the log line.
	if !waitFor(t, "redis_up 0 and a warning with Redis stopped", func() bool {
		return up() == 0 && warnings() > 0
	}) {
		return
	}
	if n := warnings(); n != 1 {
		t.Errorf("%d outage warnings, want 1", n)
	}
	if got := testutil.ToFloat64(tc.metrics.RedisFallback.WithLabelValues("cache")); got != 0 {
		t.Errorf("redis fallbacks = %v without a lookup, want 0", got)
	}

	recoveries := func() int {
		return tc.logs.count(slog.LevelInfo, "redis reachable again, cache l2 resumed")
	}
	srv.Restart(t)
	if !waitFor(t, "redis_up 1 and a recovery message after the restart", func() bool {
		return up() == 1 && recoveries() > 0
	}) {
		return
	}
	if n := recoveries(); n != 1 {
		t.Errorf("%d recovery messages, want 1", n)
	}
	tc.purgeL1("")
	if _, res := tc.Lookup(ctx, stored); res != ResultHitL2 {
		t.Errorf("Lookup after the restart: %s, want hit-l2", res)
	}
}

func TestPurgeReportsRedisFailure(t *testing.T) {
	srv := testredis.Start(t)
	tc := newTestCache(t, testOptions{redis: srv, redisTimeout: downTimeout})
	p := chatPlan(t, tc, "tiny", "hi")
	tc.store(t, p, readTestdata(t, "chat_nostream.body"))
	srv.Stop()
	if err := tc.Purge(context.Background(), ""); err == nil {
		t.Error("Purge with Redis down returned no error")
	}
	if _, res := tc.Lookup(context.Background(), p); res == ResultHitL1 {
		t.Error("L1 kept its entry when the L2 purge failed")
	}
}

func TestPurgeDuringStores(t *testing.T) {
	tc := newTestCache(t, testOptions{})
	response := readTestdata(t, "chat_nostream.body")
	plans := make([]Plan, 20)
	for i := range plans {
		plans[i] = chatPlan(t, tc, "tiny", fmt.Sprint("question ", i))
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < len(plans); i += 4 {
				tc.store(t, plans[i], response)
				tc.Lookup(context.Background(), plans[i])
			}
		})
	}
	for range 3 {
		if err := tc.Purge(context.Background(), ""); err != nil {
			t.Errorf("Purge: %v", err)
		}
		if err := tc.Purge(context.Background(), "tiny"); err != nil {
			t.Errorf("Purge(tiny): %v", err)
		}
	}
	wg.Wait()
	if err := tc.Purge(context.Background(), ""); err != nil {
		t.Fatalf("Purge: %v", err)
	}
	for _, p := range plans {
		if _, res := tc.Lookup(context.Background(), p); res != ResultMiss {
			t.Fatalf("Lookup after the last purge: %s, want miss", res)
		}
	}
}

// TestRedisCheckRejectedWrites fills Redis's memory limit under the
// noeviction policy, so that Redis replies to PING but rejects writes. The
// periodic check must keep L2 down, with one warning and no recovery
// message, until Redis takes writes again.
func TestRedisCheckRejectedWrites(t *testing.T) {
	srv := testredis.Start(t)
	tc := newTestCache(t, testOptions{redis: srv, checkInterval: 10 * time.Millisecond})
	admin := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = admin.Close() })
	ctx := context.Background()
	up := func() float64 { return testutil.ToFloat64(tc.metrics.RedisUp) }
	const downMsg = "redis unavailable, cache continues with l1 only"
	const upMsg = "redis reachable again, cache l2 resumed"

	if err := admin.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
		t.Fatalf("CONFIG SET maxmemory-policy: %v", err)
	}
	if err := admin.ConfigSet(ctx, "maxmemory", "1").Err(); err != nil {
		t.Fatalf("CONFIG SET maxmemory: %v", err)
	}
	if !waitFor(t, "redis_up 0 with writes rejected", func() bool {
		return up() == 0 && tc.logs.count(slog.LevelWarn, downMsg) > 0
	}) {
		return
	}
	time.Sleep(200 * time.Millisecond) // about 20 more checks
	if n := tc.logs.count(slog.LevelWarn, downMsg); n != 1 {
		t.Errorf("%d outage warnings while writes were rejected, want 1", n)
	}
	if n := tc.logs.count(slog.LevelInfo, upMsg); n != 0 {
		t.Errorf("%d recovery messages while writes were rejected, want 0", n)
	}
	if got := up(); got != 0 {
		t.Errorf("redis_up = %v while writes were rejected, want 0", got)
	}

	if err := admin.ConfigSet(ctx, "maxmemory", "0").Err(); err != nil {
		t.Fatalf("CONFIG SET maxmemory 0: %v", err)
	}
	waitFor(t, "redis_up 1 and a recovery message once writes work", func() bool {
		return up() == 1 && tc.logs.count(slog.LevelInfo, upMsg) == 1
	})
}
