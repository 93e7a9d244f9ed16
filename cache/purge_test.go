package cache

import (
	"context"
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testredis"
)

// deliveryTimeout bounds the wait for an asynchronous pub/sub delivery or
// a go-redis reconnection. Both take well under a second on loopback.
const deliveryTimeout = 5 * time.Second

const (
	msgPurgedByOther = "cache l1 purged by another instance"
	msgResubscribed  = "cache purge channel subscribed after an interruption, l1 cleared because purges may have been missed"
)

// waitForDelivery polls cond every few milliseconds, each poll costing a
// Redis call or a log read, until it returns true. It fails the test with
// what when deliveryTimeout passes first.
func waitForDelivery(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(deliveryTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", deliveryTimeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// redisClient returns a client of srv for the test's own commands.
func redisClient(t *testing.T, srv *testredis.Server) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb
}

// subscribers returns the number of connections subscribed to channel.
func subscribers(t *testing.T, rdb *redis.Client, channel string) int64 {
	t.Helper()
	counts, err := rdb.PubSubNumSub(context.Background(), channel).Result()
	if err != nil {
		t.Fatalf("PUBSUB NUMSUB %s: %v", channel, err)
	}
	return counts[channel]
}

// fillL1 stores a chat response of model through a and brings it into b's
// L1 with an L2 hit. It returns b's plan of that response.
func fillL1(t *testing.T, a, b *testCache, model string) Plan {
	t.Helper()
	ctx := context.Background()
	a.store(t, chatPlan(t, a, model, "hi"), readTestdata(t, "chat_nostream.body"))
	p := chatPlan(t, b, model, "hi")
	if _, res := b.Lookup(ctx, p); res != ResultHitL2 {
		t.Fatalf("%s through the second instance: %s, want hit-l2", model, res)
	}
	if _, res := b.Lookup(ctx, p); res != ResultHitL1 {
		t.Fatalf("%s through the second instance again: %s, want hit-l1", model, res)
	}
	return p
}

func TestPurgeReachesOtherInstance(t *testing.T) {
	srv := testredis.Start(t)
	a := newTestCache(t, testOptions{redis: srv})
	b := newTestCache(t, testOptions{redis: srv})
	ctx := context.Background()
	tiny := fillL1(t, a, b, "tiny")
	tiny2 := fillL1(t, a, b, "tiny2")

	if err := a.Purge(ctx, "tiny"); err != nil {
		t.Fatalf("Purge(tiny): %v", err)
	}
	var res Result
	waitForDelivery(t, "the second instance to stop serving tiny from L1", func() bool {
		_, res = b.Lookup(ctx, tiny)
		return res != ResultHitL1
	})
	if res != ResultMiss {
		t.Errorf("tiny through the second instance after its purge: %s, want miss", res)
	}
	if _, res := b.Lookup(ctx, tiny2); res != ResultHitL1 {
		t.Errorf("tiny2 through the second instance after purging tiny: %s, want hit-l1", res)
	}

	if err := a.Purge(ctx, ""); err != nil {
		t.Fatalf("Purge all: %v", err)
	}
	waitForDelivery(t, "the second instance to stop serving tiny2 from L1", func() bool {
		_, res = b.Lookup(ctx, tiny2)
		return res != ResultHitL1
	})
	if res != ResultMiss {
		t.Errorf("tiny2 through the second instance after purging all: %s, want miss", res)
	}
	// Each purge is logged after it is applied.
	waitForDelivery(t, "the second instance to log both purges", func() bool {
		return b.logs.count(slog.LevelInfo, msgPurgedByOther) == 2
	})
	if n := a.logs.count(slog.LevelInfo, msgPurgedByOther); n != 0 {
		t.Errorf("purges logged by the purging instance = %d, want 0: it ignores its own messages", n)
	}
}

func TestOwnPurgeMessageIgnored(t *testing.T) {
	srv := testredis.Start(t)
	a := newTestCache(t, testOptions{redis: srv})
	rdb := redisClient(t, srv)
	ctx := context.Background()
	response := readTestdata(t, "chat_nostream.body")
	tiny := chatPlan(t, a, "tiny", "hi")
	a.store(t, tiny, response)
	other := chatPlan(t, a, "other", "hi")
	a.store(t, other, response)

	publish := func(payload string) {
		t.Helper()
		if err := rdb.Publish(ctx, a.l2.purgeChannel, payload).Err(); err != nil {
			t.Fatalf("PUBLISH %s: %v", payload, err)
		}
	}
	own, err := json.Marshal(purgeMessage{Model: "tiny:latest", Instance: a.l2.instanceID})
	if err != nil {
		t.Fatal(err)
	}
	publish(string(own))
	publish("not json")
	// Redis delivers the messages of one connection in order, so once the
	// last one is applied the others have been handled. It names no
	// instance, so every instance applies it.
	publish(`{"model":"other"}`)
	waitForDelivery(t, "the purge of model other to be applied and logged", func() bool {
		_, res := a.Lookup(ctx, other)
		return res != ResultHitL1 && a.logs.count(slog.LevelInfo, msgPurgedByOther) > 0
	})

	if _, res := a.Lookup(ctx, tiny); res != ResultHitL1 {
		t.Errorf("entry after a purge message of its own instance: %s, want hit-l1", res)
	}
	if n := a.logs.count(slog.LevelInfo, msgPurgedByOther); n != 1 {
		t.Errorf("purges applied = %d, want 1: only the message without an instance", n)
	}
	if n := a.logs.count(slog.LevelWarn, "invalid cache purge message ignored"); n != 1 {
		t.Errorf("invalid message warnings = %d, want 1", n)
	}
}

func TestPurgeAfterRedisRestart(t *testing.T) {
	srv := testredis.Start(t)
	a := newTestCache(t, testOptions{redis: srv})
	b := newTestCache(t, testOptions{redis: srv})
	ctx := context.Background()
	response := readTestdata(t, "chat_nostream.body")
	before := chatPlan(t, b, "tiny", "before")
	b.store(t, before, response)

	srv.Restart(t)
	waitForDelivery(t, "the subscription to be made again", func() bool {
		return b.logs.count(slog.LevelInfo, msgResubscribed) == 1
	})
	if _, res := b.Lookup(ctx, before); res == ResultHitL1 {
		t.Error("L1 kept an entry stored before the subscription dropped")
	}

	// A purge still reaches the instance once it has subscribed again.
	after := chatPlan(t, b, "tiny", "after")
	b.store(t, after, response)
	if err := a.Purge(ctx, "tiny"); err != nil {
		t.Fatalf("Purge(tiny) after the restart: %v", err)
	}
	waitForDelivery(t, "the purge after the restart to reach the other instance", func() bool {
		_, res := b.Lookup(ctx, after)
		return res != ResultHitL1
	})
}

func TestPurgeReachesInstanceStartedWithRedisDown(t *testing.T) {
	srv := testredis.Start(t)
	srv.Stop()
	late := newTestCache(t, testOptions{redis: srv, redisTimeout: downTimeout})
	if n := late.logs.count(slog.LevelWarn, "redis unavailable, cache continues with l1 only"); n != 1 {
		t.Errorf("warnings of a failed subscription = %d, want 1", n)
	}

	srv.Restart(t)
	waitForDelivery(t, "the subscription once Redis is up", func() bool {
		return late.logs.count(slog.LevelInfo, msgResubscribed) == 1
	})
	p := chatPlan(t, late, "tiny", "hi")
	late.store(t, p, readTestdata(t, "chat_nostream.body"))
	if _, res := late.Lookup(context.Background(), p); res != ResultHitL1 {
		t.Fatalf("entry stored after the subscription: %s, want hit-l1", res)
	}
	other := newTestCache(t, testOptions{redis: srv})
	if err := other.Purge(context.Background(), ""); err != nil {
		t.Fatalf("Purge all: %v", err)
	}
	waitForDelivery(t, "the purge to reach the instance started with Redis down", func() bool {
		_, res := late.Lookup(context.Background(), p)
		return res != ResultHitL1
	})
}

func TestPurgeRedisDownNotPublished(t *testing.T) {
	srv := testredis.Start(t)
	a := newTestCache(t, testOptions{redis: srv, redisTimeout: downTimeout})
	b := newTestCache(t, testOptions{redis: srv})
	p := fillL1(t, a, b, "tiny")

	srv.Stop()
	if err := a.Purge(context.Background(), "tiny"); err == nil {
		t.Error("Purge with Redis down returned no error")
	}
	if _, res := a.Lookup(context.Background(), chatPlan(t, a, "tiny", "hi")); res == ResultHitL1 {
		t.Error("the purging instance kept its L1 entry with Redis down")
	}
	if _, res := b.Lookup(context.Background(), p); res != ResultHitL1 {
		t.Errorf("other instance with Redis down: %s, want hit-l1 until its subscription is made again", res)
	}
}

func TestPurgeSubscriberOnlyWithL2(t *testing.T) {
	srv := testredis.Start(t)
	rdb := redisClient(t, srv)
	on := newTestCache(t, testOptions{redis: srv})
	off := newTestCache(t, testOptions{redis: srv, cfg: config.Cache{L2: config.CacheL2{Enabled: boolPtr(false)}}})
	if off.l2 != nil {
		t.Fatal("cache with l2 disabled has an L2 tier")
	}
	if got := subscribers(t, rdb, on.l2.purgeChannel); got != 1 {
		t.Errorf("subscribers of %s = %d, want 1: only the cache with L2", on.l2.purgeChannel, got)
	}
	if err := off.Purge(context.Background(), ""); err != nil {
		t.Errorf("Purge without L2: %v", err)
	}
}

func TestPurgeChannelName(t *testing.T) {
	srv := testredis.Start(t)
	a := newTestCache(t, testOptions{redis: srv})
	if want := "test:cache:purge:0"; a.l2.purgeChannel != want {
		t.Errorf("purge channel = %q, want %q", a.l2.purgeChannel, want)
	}
	if got := purgeChannelName("llmproxy:cache:", 3); got != "llmproxy:cache:purge:3" {
		t.Errorf("purge channel of database 3 = %q, want llmproxy:cache:purge:3", got)
	}
}

func TestCloseEndsPurgeSubscriber(t *testing.T) {
	srv := testredis.Start(t)
	rdb := redisClient(t, srv)
	a := newTestCache(t, testOptions{redis: srv})
	before := goleak.IgnoreCurrent()

	brdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	b, err := New(config.Cache{}, brdb, config.Redis{KeyPrefix: "test:", Timeout: time.Second}, nil, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if got := subscribers(t, rdb, a.l2.purgeChannel); got != 2 {
		t.Fatalf("subscribers with two caches = %d, want 2", got)
	}
	b.Close()
	_ = brdb.Close()
	goleak.VerifyNone(t, before)
	waitForDelivery(t, "Redis to drop the closed subscription", func() bool {
		return subscribers(t, rdb, a.l2.purgeChannel) == 1
	})

	if err := a.Purge(context.Background(), ""); err != nil {
		t.Errorf("Purge after another instance closed: %v", err)
	}
}

func TestCloseAfterRedisClientClosed(t *testing.T) {
	srv := testredis.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	c, err := New(config.Cache{}, rdb, config.Redis{KeyPrefix: "test:", Timeout: time.Second}, nil, nil)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	_ = rdb.Close()
	closed := make(chan struct{})
	go func() {
		c.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(deliveryTimeout):
		t.Fatalf("Close did not return within %s after the Redis client was closed", deliveryTimeout)
	}
}
