package cache

import (
	"context"
	"testing"

	"github.com/llmproxy/llmproxy/internal/testredis"
)

func TestStoreSkippedAfterPurge(t *testing.T) {
	for _, tc := range []struct {
		name, purged string
	}{
		{"model purge", "tiny"},
		{"purge of every model", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := testredis.Start(t)
			c := newTestCache(t, testOptions{redis: srv})
			ctx := context.Background()
			body := readTestdata(t, "chat_nostream.body")
			started := chatPlan(t, c, "tiny", "hi")
			if err := c.Purge(ctx, tc.purged); err != nil {
				t.Fatalf("Purge(%q): %v", tc.purged, err)
			}
			if e := c.store(t, started, body); e == nil {
				t.Error("Store of a request started before the purge returned no entry for its waiters")
			}
			if _, res := c.Lookup(ctx, chatPlan(t, c, "tiny", "hi")); res != ResultMiss {
				t.Errorf("lookup of a response whose request started before the purge: %s, want miss", res)
			}

			after := chatPlan(t, c, "tiny", "hi")
			c.store(t, after, body)
			if _, res := c.Lookup(ctx, chatPlan(t, c, "tiny", "hi")); res != ResultHitL1 {
				t.Errorf("lookup of a response whose request started after the purge: %s, want hit-l1", res)
			}
		})
	}
}

func TestStoreOfOtherModelKeptAfterPurge(t *testing.T) {
	c := newTestCache(t, testOptions{})
	ctx := context.Background()
	started := chatPlan(t, c, "tiny2", "hi")
	if err := c.Purge(ctx, "tiny"); err != nil {
		t.Fatalf("Purge(tiny): %v", err)
	}
	c.store(t, started, readTestdata(t, "chat_nostream.body"))
	if _, res := c.Lookup(ctx, chatPlan(t, c, "tiny2", "hi")); res != ResultHitL1 {
		t.Errorf("lookup of tiny2 stored after a purge of tiny: %s, want hit-l1", res)
	}
}

func TestStoreSkippedAfterOtherInstancePurge(t *testing.T) {
	srv := testredis.Start(t)
	a := newTestCache(t, testOptions{redis: srv})
	b := newTestCache(t, testOptions{redis: srv})
	ctx := context.Background()
	marker := fillL1(t, a, b, "tiny")
	started := chatPlan(t, b, "tiny", "later")

	if err := a.Purge(ctx, "tiny"); err != nil {
		t.Fatalf("Purge(tiny): %v", err)
	}
	waitForDelivery(t, "the second instance to apply the purge", func() bool {
		_, res := b.Lookup(ctx, marker)
		return res != ResultHitL1
	})
	b.store(t, started, readTestdata(t, "chat_nostream.body"))
	if _, res := b.Lookup(ctx, chatPlan(t, b, "tiny", "later")); res != ResultMiss {
		t.Errorf("lookup through the storing instance: %s, want miss", res)
	}
	if _, res := a.Lookup(ctx, chatPlan(t, a, "tiny", "later")); res != ResultMiss {
		t.Errorf("lookup through the purging instance: %s, want miss", res)
	}
}

func TestStoreEmbeddingsSkippedAfterPurge(t *testing.T) {
	c := newTestCache(t, testOptions{})
	ctx := context.Background()
	const body = `{"model":"tiny","input":["a"]}`
	b := c.LookupEmbeddings(ctx, c.plan(t, "/api/embed", body))
	if err := c.Purge(ctx, "tiny"); err != nil {
		t.Fatalf("Purge(tiny): %v", err)
	}
	if _, err := c.StoreEmbeddings(ctx, b, []byte(`{"model":"tiny","embeddings":[[1,2]]}`)); err != nil {
		t.Fatalf("StoreEmbeddings: %v", err)
	}
	if res := c.LookupEmbeddings(ctx, c.plan(t, "/api/embed", body)).Result(); res != ResultMiss {
		t.Errorf("lookup of an input whose request started before the purge: %s, want miss", res)
	}
}

func TestL2FillSkippedAfterPurge(t *testing.T) {
	srv := testredis.Start(t)
	a := newTestCache(t, testOptions{redis: srv})
	b := newTestCache(t, testOptions{redis: srv})
	ctx := context.Background()
	a.store(t, chatPlan(t, a, "tiny", "hi"), readTestdata(t, "chat_nostream.body"))
	// b's request starts, and this instance purges before its L2 read
	// copies the entry into L1. The entry is still in L2 because b purges
	// nothing there in this test: an L1-only purge takes the place of
	// the purge message of another instance.
	started := chatPlan(t, b, "tiny", "hi")
	b.purgeMu.Lock()
	b.epochs.bump(NormalizeModel("tiny"))
	b.purgeL1(NormalizeModel("tiny"))
	b.purgeMu.Unlock()
	if _, res := b.Lookup(ctx, started); res != ResultHitL2 {
		t.Fatalf("lookup of the entry in L2: %s, want hit-l2", res)
	}
	if rec, ok := b.l1.get(started.Key); ok {
		t.Errorf("L1 holds the entry read from L2 after the purge: %v", rec.key)
	}
}
