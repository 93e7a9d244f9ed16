package balancer

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/internal/testclock"
)

// reportSpeed records that node generated at tps tokens per second, as a
// finished request's report does.
func reportSpeed(b *Balancer, node string, tps float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.est.observeSpeed(node, tps, b.now())
}

// placeColdModels places one request for each of count models that no
// node has loaded, from first on, and returns how many went to each node.
func placeColdModels(t *testing.T, b *Balancer, first, count int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for i := first; i < first+count; i++ {
		l, err := b.Acquire(context.Background(), Request{Model: fmt.Sprintf("m%03d:latest", i), Slot: true})
		if err != nil {
			t.Fatal(err)
		}
		got[l.Node.Name]++
		l.Release()
	}
	return got
}

func TestStaleSpeedStopsLockout(t *testing.T) {
	var models []string
	for i := range 240 {
		models = append(models, fmt.Sprintf("m%03d:latest", i))
	}
	clock := testclock.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	b := testBalancer(t, clock, PolicyInferenceAware,
		testNode(t, "n1", 256, models), testNode(t, "n2", 256, models), testNode(t, "n3", 256, models))
	reportSpeed(b, "n1", 100)
	reportSpeed(b, "n2", 100)
	reportSpeed(b, "n3", 50)

	if got := placeColdModels(t, b, 0, 60); got["n3"] != 0 {
		t.Fatalf("n3, measured at half the speed, got %d of 60 first loads, want 0; split %v", got["n3"], got)
	}

	// Only n1 and n2 report while n3 gets no work.
	clock.Advance(speedMaxAge / 2)
	reportSpeed(b, "n1", 100)
	reportSpeed(b, "n2", 100)
	clock.Advance(speedMaxAge/2 + time.Second)
	got := placeColdModels(t, b, 60, 60)
	if got["n3"] < 10 {
		t.Errorf("n3, with a speed older than %v, got %d of 60 first loads, want a share near 20; split %v",
			speedMaxAge, got["n3"], got)
	}

	// A new report that confirms the slow speed counts again.
	reportSpeed(b, "n3", 50)
	if got := placeColdModels(t, b, 120, 60); got["n3"] != 0 {
		t.Errorf("n3, measured again at half the speed, got %d of 60 first loads, want 0; split %v", got["n3"], got)
	}
}

func TestStaleSpeedIsReplaced(t *testing.T) {
	clock := testclock.New(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	b := testBalancer(t, clock, PolicyInferenceAware, testNode(t, "n1", 4, []string{"a:latest"}))
	reportSpeed(b, "n1", 50)
	reportSpeed(b, "n1", 100)
	if got, want := b.NodeTokensPerSecond("n1"), 60.0; got != want {
		t.Errorf("speed after 50 and 100 within %v = %v, want the moving average %v", speedMaxAge, got, want)
	}
	clock.Advance(speedMaxAge)
	reportSpeed(b, "n1", 100)
	if got, want := b.NodeTokensPerSecond("n1"), 100.0; got != want {
		t.Errorf("speed after a report %v after the last = %v, want the new report %v", speedMaxAge, got, want)
	}
}
