package health

import (
	"net/url"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testclock"
)

// cappedFleet returns one tracker per entry of models, each for an up node
// that lists the given models, sharing an ejection cap of percent. Passive
// checks take a node out at its second failure, and breakers open at the
// third.
func cappedFleet(t *testing.T, percent int, models ...[]string) []*tracker {
	t.Helper()
	cfg := config.Default()
	cfg.Health.MaxFails = 2
	cfg.Breaker.ConsecutiveFailures = 3
	cfg.Breaker.FailureRatio = 0
	cfg.Breaker.OpenTimeout = time.Hour
	clock := testclock.New(time.Unix(1000, 0))
	ec := &ejectionCap{}
	var trackers []*tracker
	for i, names := range models {
		u, _ := url.Parse("http://n:11434")
		n := balancer.NewNode("n"+string(rune('0'+i)), u, 4, 1)
		n.SetUp(true)
		var listed []balancer.Model
		for _, name := range names {
			listed = append(listed, balancer.Model{Name: name})
		}
		n.SetInventory(listed, nil, clock.Now())
		tr := newTracker(n, &cfg, clock.Now, func(*balancer.Node, gobreaker.State, gobreaker.State) {}, ec)
		trackers = append(trackers, tr)
	}
	ec.set(percent, trackers)
	return trackers
}

// failTwice reports two failures of tr and returns the second report.
func failTwice(tr *tracker) reported {
	tr.report("connect")
	return tr.report("connect")
}

func TestEjectionCapPercent(t *testing.T) {
	m := []string{"m:latest"}
	cases := []struct {
		name    string
		percent int
		nodes   int
		want    int // nodes taken out when every node but one fails
	}{
		{"half of four", 50, 4, 2},
		{"half of three rounds down", 50, 3, 1},
		{"at least one", 10, 3, 1},
		{"all but the last usable node", 100, 3, 2},
		{"zero takes out none", 0, 3, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			models := make([][]string, tc.nodes)
			for i := range models {
				models[i] = m
			}
			fleet := cappedFleet(t, tc.percent, models...)
			out, held := 0, 0
			for _, tr := range fleet[:tc.nodes-1] {
				r := failTwice(tr)
				if r.out != nil {
					out++
				}
				if r.passiveHeld {
					held++
				}
			}
			if out != tc.want {
				t.Errorf("%d nodes taken out, want %d", out, tc.want)
			}
			if held != tc.nodes-1-tc.want {
				t.Errorf("%d take-outs reported as held, want %d", held, tc.nodes-1-tc.want)
			}
			for _, tr := range fleet {
				if tr.Usable() == tr.passiveOut() {
					t.Errorf("node %s: usable %v while passive out %v", tr.node.Name, tr.Usable(), tr.passiveOut())
				}
			}
		})
	}
}

func TestEjectionCapKeepsLastNodeOfModel(t *testing.T) {
	// n0 and n1 list a, n2 lists only b.
	fleet := cappedFleet(t, 100, []string{"a:latest"}, []string{"a:latest"}, []string{"b:latest"})
	if r := failTwice(fleet[0]); r.out == nil {
		t.Fatal("n0 kept in although n1 also lists a")
	}
	r := failTwice(fleet[1])
	if r.out != nil {
		t.Fatal("n1 taken out, leaving no usable node for a")
	}
	if !r.passiveHeld {
		t.Error("the refused take-out of n1 was not reported")
	}
}

func TestEjectionCapHoldsBreaker(t *testing.T) {
	fleet := cappedFleet(t, 50, []string{"m:latest"}, []string{"m:latest"})
	for range 3 {
		fleet[0].report("timeout")
	}
	if got := fleet[0].breakerState(); got != "open" {
		t.Fatalf("breaker of n0 %s after 3 failures, want open", got)
	}
	var held int64
	for range 4 {
		held += fleet[1].report("timeout").breakerHeld
	}
	if got := fleet[1].breakerState(); got != "closed" {
		t.Errorf("breaker of n1 %s with n0 out and a cap of half the fleet, want closed", got)
	}
	if held != 2 {
		t.Errorf("%d refused breaker trips reported, want 2 (the third and fourth failures)", held)
	}
	if !fleet[1].Usable() {
		t.Error("n1 unusable while the cap keeps it in")
	}
}

func TestEjectionCapCountsNodeOutOnce(t *testing.T) {
	// A node that passive checks took out may still open its breaker: that
	// takes no capacity from the fleet.
	fleet := cappedFleet(t, 50, []string{"m:latest"}, []string{"m:latest"})
	if r := failTwice(fleet[0]); r.out == nil {
		t.Fatal("n0 not taken out")
	}
	if r := fleet[0].report("timeout"); r.breakerHeld != 0 {
		t.Error("the cap refused to open the breaker of a node that is out already")
	}
	if got := fleet[0].breakerState(); got != "open" {
		t.Errorf("breaker of n0 %s after 3 failures, want open", got)
	}
}

func TestEjectionCapRestrictsSoleHolder(t *testing.T) {
	// n0 and n1 list a, n2 lists a and b, so n2 is the last usable node of b.
	fleet := cappedFleet(t, 50, []string{"a:latest"}, []string{"a:latest"}, []string{"a:latest", "b:latest"})
	n2 := fleet[2]
	r := failTwice(n2)
	if r.out == nil {
		t.Fatal("n2 kept in although n0 and n1 list a")
	}
	if !r.out.restricted {
		t.Error("take-out of n2, the last usable node of b, not restricted")
	}
	if r.passiveHeld {
		t.Error("restricted take-out of n2 reported as held")
	}
	if n2.Usable() {
		t.Error("n2 usable after its take-out")
	}
	if !n2.Restricted() {
		t.Error("n2 not restricted after its take-out")
	}
	// The restriction counts against the cap of one node out of three.
	if r := failTwice(fleet[0]); r.out != nil {
		t.Error("n0 taken out while restricted n2 fills the cap")
	}
}

func TestEjectionCapRestrictsBreaker(t *testing.T) {
	fleet := cappedFleet(t, 50, []string{"a:latest"}, []string{"a:latest"}, []string{"a:latest", "b:latest"})
	n2 := fleet[2]
	var held int64
	for range 3 {
		held += n2.report("timeout").breakerHeld
	}
	if got := n2.breakerState(); got != "open" {
		t.Fatalf("breaker of n2 %s after 3 failures, want open", got)
	}
	if held != 0 {
		t.Errorf("%d breaker trips of n2 reported as held, want 0", held)
	}
	if !n2.Restricted() {
		t.Error("n2 not restricted with its breaker open")
	}
}

func TestEjectionCapFullTakeOutNotRestricted(t *testing.T) {
	fleet := cappedFleet(t, 50, []string{"a:latest"}, []string{"a:latest"}, []string{"a:latest", "b:latest"})
	r := failTwice(fleet[0])
	if r.out == nil {
		t.Fatal("n0 kept in although n1 and n2 list a")
	}
	if r.out.restricted {
		t.Error("take-out of n0, which lists no model of its own, restricted")
	}
	if fleet[0].Restricted() {
		t.Error("n0 restricted after a full take-out")
	}
}

func TestRestrictionEndsWithTakeOut(t *testing.T) {
	cfg := config.Default()
	cfg.Health.MaxFails = 2
	cfg.Health.FailTimeout = time.Minute
	clock := testclock.New(time.Unix(1000, 0))
	ec := &ejectionCap{}
	var fleet []*tracker
	for i, names := range [][]string{{"a:latest"}, {"a:latest", "b:latest"}} {
		u, _ := url.Parse("http://n:11434")
		n := balancer.NewNode("n"+string(rune('0'+i)), u, 4, 1)
		var listed []balancer.Model
		for _, name := range names {
			listed = append(listed, balancer.Model{Name: name})
		}
		n.SetInventory(listed, nil, clock.Now())
		fleet = append(fleet, newTracker(n, &cfg, clock.Now, func(*balancer.Node, gobreaker.State, gobreaker.State) {}, ec))
	}
	ec.set(50, fleet)
	n1 := fleet[1]
	r := failTwice(n1)
	if r.out == nil {
		t.Fatal("n1 kept in although n0 lists a")
	}
	if !r.out.restricted {
		t.Fatal("take-out of n1, the last usable node of b, not restricted")
	}
	clock.Advance(time.Minute)
	if n1.Restricted() {
		t.Error("n1 still restricted after fail_timeout")
	}
	if !n1.Usable() {
		t.Error("n1 unusable after fail_timeout")
	}
}
