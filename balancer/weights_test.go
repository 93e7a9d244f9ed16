package balancer

import (
	"context"
	"fmt"
	"testing"
)

// weightedNode returns a node with 8 slots and the given weight that lists
// a:latest, loaded unless cold is set.
func weightedNode(t *testing.T, name string, weight float64, cold bool) *Node {
	t.Helper()
	loaded := []string{"a:latest"}
	if cold {
		loaded = nil
	}
	n := testNode(t, name, 8, []string{"a:latest"}, loaded...)
	n.SetLimits(8, weight)
	return n
}

// placeSequentially places and releases count requests for a:latest one
// after another, as a single client would send them, and returns the
// names of the nodes in placement order.
func placeSequentially(t *testing.T, b *Balancer, count int) []string {
	t.Helper()
	var order []string
	for range count {
		l, err := b.Acquire(context.Background(), Request{Model: "a:latest", Slot: true})
		if err != nil {
			t.Fatal(err)
		}
		order = append(order, l.Node.Name)
		l.Release()
	}
	return order
}

func countNames(names []string) map[string]int {
	out := map[string]int{}
	for _, n := range names {
		out[n]++
	}
	return out
}

// within reports whether got is at most slack away from want.
func within(got, want, slack int) bool {
	return got >= want-slack && got <= want+slack
}

func TestWeightSplitsIdleNodes(t *testing.T) {
	for _, policy := range []string{PolicyInferenceAware, PolicyLeastConn, PolicyRoundRobin} {
		t.Run(policy, func(t *testing.T) {
			b := testBalancer(t, nil, policy,
				weightedNode(t, "n1", 4, false), weightedNode(t, "n2", 1, false), weightedNode(t, "n3", 1, false))
			order := placeSequentially(t, b, 120)
			got := countNames(order)
			if got["n1"] != 80 {
				t.Errorf("n1 (weight 4) got %d of 120 requests, want 80; split %v", got["n1"], got)
			}
			if got["n2"] != 20 {
				t.Errorf("n2 (weight 1) got %d of 120 requests, want 20; split %v", got["n2"], got)
			}
			if got["n3"] != 20 {
				t.Errorf("n3 (weight 1) got %d of 120 requests, want 20; split %v", got["n3"], got)
			}
			// Smooth weighted round robin spreads the light nodes' turns:
			// each run of six placements has one turn of n2 and one of n3.
			for start := 0; start+6 <= len(order); start += 6 {
				run := countNames(order[start : start+6])
				if run["n2"] != 1 || run["n3"] != 1 {
					t.Errorf("placements %d to %d %v, want one each on n2 and n3", start, start+5, order[start:start+6])
					break
				}
			}
		})
	}
}

func TestWeightSplitsConcurrentRoundRobin(t *testing.T) {
	b := testBalancer(t, nil, PolicyRoundRobin,
		weightedNode(t, "n1", 4, false), weightedNode(t, "n2", 1, false), weightedNode(t, "n3", 1, false))
	// Six requests in flight at once, each released after the next one is
	// placed, as six clients keep the nodes busy. No node runs out of
	// slots, which would skip it.
	got := map[string]int{}
	var leases []*Lease
	for range 120 {
		l, err := b.Acquire(context.Background(), Request{Model: "a:latest", Slot: true})
		if err != nil {
			t.Fatal(err)
		}
		got[l.Node.Name]++
		leases = append(leases, l)
		if len(leases) == 6 {
			leases[0].Release()
			leases = leases[1:]
		}
	}
	for _, l := range leases {
		l.Release()
	}
	want := map[string]int{"n1": 80, "n2": 20, "n3": 20}
	for name, w := range want {
		if !within(got[name], w, 8) {
			t.Errorf("%s got %d of 120 requests, want about %d; split %v", name, got[name], w, got)
		}
	}
}

// TestWeightOnlyBreaksTies checks that weight decides only among the nodes
// that inference_aware ranks equal: the warm nodes share the requests by
// weight, and the heavier cold node gets none.
func TestWeightOnlyBreaksTies(t *testing.T) {
	b := testBalancer(t, nil, PolicyInferenceAware,
		weightedNode(t, "warm4", 4, false), weightedNode(t, "warm1", 1, false), weightedNode(t, "cold8", 8, true))
	got := countNames(placeSequentially(t, b, 100))
	if got["cold8"] != 0 {
		t.Errorf("cold node of weight 8 got %d requests while warm nodes were idle, want 0; split %v",
			got["cold8"], got)
	}
	if got["warm4"] != 80 {
		t.Errorf("warm node of weight 4 got %d of 100 requests, want 80; split %v", got["warm4"], got)
	}
	if got["warm1"] != 20 {
		t.Errorf("warm node of weight 1 got %d of 100 requests, want 20; split %v", got["warm1"], got)
	}
}

func TestWeightFollowsReloads(t *testing.T) {
	n1 := weightedNode(t, "n1", 4, false)
	n2 := weightedNode(t, "n2", 1, false)
	n3 := weightedNode(t, "n3", 1, false)
	b := testBalancer(t, nil, PolicyLeastConn, n1, n2, n3)
	// Stop part-way through a cycle, so that the current weights are not
	// back at zero when the weights change.
	placeSequentially(t, b, 3)

	// A changed weight applies from the next placement, without SetNodes.
	n1.SetLimits(8, 1)
	n3.SetLimits(8, 2)
	got := countNames(placeSequentially(t, b, 120))
	for name, w := range map[string]int{"n1": 30, "n2": 30, "n3": 60} {
		if !within(got[name], w, 2) {
			t.Errorf("after the weight change %s got %d of 120 requests, want about %d; split %v",
				name, got[name], w, got)
		}
	}

	// Remove n1 part-way through a cycle and add n4 of weight 3.
	placeSequentially(t, b, 1)
	n4 := weightedNode(t, "n4", 3, false)
	b.SetNodes([]*Node{n2, n3, n4})
	got = countNames(placeSequentially(t, b, 120))
	if got["n1"] != 0 {
		t.Errorf("removed n1 got %d requests", got["n1"])
	}
	for name, w := range map[string]int{"n2": 20, "n3": 40, "n4": 60} {
		if got[name] != w {
			t.Errorf("after the node change %s got %d of 120 requests, want %d; split %v",
				name, got[name], w, got)
		}
	}
}

// firstLoads places one request for each of count models that no node has
// loaded, on a new balancer over nodes of the given weights, and returns
// the node each model went to.
func firstLoads(t *testing.T, weights map[string]float64, count int) []string {
	t.Helper()
	models := make([]string, count)
	for i := range models {
		models[i] = fmt.Sprintf("m%d:latest", i)
	}
	var nodes []*Node
	for _, name := range []string{"n1", "n2", "n3"} {
		n := testNode(t, name, 8, models)
		n.SetLimits(8, weights[name])
		nodes = append(nodes, n)
	}
	b := testBalancer(t, nil, PolicyInferenceAware, nodes...)
	placed := make([]string, count)
	for i, m := range models {
		l, err := b.Acquire(context.Background(), Request{Model: m, Slot: true})
		if err != nil {
			t.Fatal(err)
		}
		placed[i] = l.Node.Name
		l.Release()
	}
	return placed
}

// TestWeightSpreadsFirstLoads checks that the models no node has loaded
// go to the nodes in proportion to weight, and that each model goes to
// the same node every time, so that a model's requests do not load it on
// several nodes.
func TestWeightSpreadsFirstLoads(t *testing.T) {
	weights := map[string]float64{"n1": 4, "n2": 1, "n3": 1}
	placed := firstLoads(t, weights, 300)
	got := countNames(placed)
	// Binomial spread: a standard deviation of about 8 for n1 and 7 for
	// the others.
	for name, want := range map[string]int{"n1": 200, "n2": 50, "n3": 50} {
		if !within(got[name], want, 30) {
			t.Errorf("%s (weight %v) got the first load of %d of 300 models, want about %d; split %v",
				name, weights[name], got[name], want, got)
		}
	}
	again := firstLoads(t, weights, 300)
	for i := range placed {
		if placed[i] != again[i] {
			t.Errorf("model m%d went to %s, then to %s on a new balancer", i, placed[i], again[i])
		}
	}

	equal := countNames(firstLoads(t, map[string]float64{"n1": 1, "n2": 1, "n3": 1}, 300))
	for _, name := range []string{"n1", "n2", "n3"} {
		if !within(equal[name], 100, 30) {
			t.Errorf("equal weights: %s got %d of 300 models, want about 100; split %v", name, equal[name], equal)
		}
	}
}
