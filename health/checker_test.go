package health_test

import (
	"context"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/health"
	"github.com/llmproxy/llmproxy/internal/testenv"
	"github.com/llmproxy/llmproxy/ollamasim"
)

// runChecker starts the health checks of one node, sim, probed every
// interval. The checks stop when the test ends.
func runChecker(t *testing.T, sim *ollamasim.Running, interval time.Duration) (*health.Checker,
	*balancer.Node, *config.Config) {
	t.Helper()
	cfg := testenv.Config(t, sim)
	cfg.Health.Interval = interval
	u, err := url.Parse(cfg.Nodes[0].URL)
	if err != nil {
		t.Fatal(err)
	}
	n := balancer.NewNode(cfg.Nodes[0].Name, u, 1, 1)
	bal := balancer.New(balancer.SettingsFrom(cfg), []*balancer.Node{n}, nil)
	c := health.New(cfg, bal, nil, testenv.Logger())

	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		c.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-ran
	})
	return c, n, cfg
}

// TestProbesOfOneNodeTakeTurns runs a node's probe loop at a short
// interval while ProbeAll, as a reload calls it, probes the same node from
// several goroutines. The race detector reports overlapping probes.
func TestProbesOfOneNodeTakeTurns(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	c, n, _ := runChecker(t, sim, time.Millisecond)
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				c.ProbeAll(context.Background())
			}
		}()
	}
	wg.Wait()
	if !n.Up() || !n.HasModel("m:latest") {
		t.Errorf("node up %v, lists m %v; want a healthy node that lists m", n.Up(), n.HasModel("m:latest"))
	}
}

// TestReloadedIntervalApplies starts the probe loops with an interval of an
// hour and then reloads a short one. The loops probe at the short interval
// without waiting out the hour.
func TestReloadedIntervalApplies(t *testing.T) {
	sim := testenv.Sim(t, "m", ollamasim.Config{})
	c, n, cfg := runChecker(t, sim, time.Hour)
	testenv.WaitFor(t, 5*time.Second, "the first probe", func() bool {
		return n.HasModel("m:latest")
	})

	before := sim.Server().Requests("/api/version")
	next := *cfg
	next.Health.Interval = 20 * time.Millisecond
	c.Sync(&next)
	testenv.WaitFor(t, 10*time.Second, "probes at the reloaded interval of 20ms", func() bool {
		return sim.Server().Requests("/api/version") >= before+3
	})
}
