package balancer

import (
	"context"
	"errors"
	"testing"
)

// restrictedGate keeps its node out restricted, as the health package does
// for a failing node that is the last usable node of some of its models.
type restrictedGate struct{}

func (restrictedGate) Usable() bool     { return false }
func (restrictedGate) Restricted() bool { return true }

// restrictedFleet returns a balancer over a and b, which list m, and c,
// which lists m and x and is restricted. a and b get one request each, so
// that least_conn would pick the idle c next if c were usable.
func restrictedFleet(t *testing.T) (*Balancer, []*Node) {
	t.Helper()
	a := testNode(t, "a", 4, []string{"m:latest"})
	b := testNode(t, "b", 4, []string{"m:latest"})
	c := testNode(t, "c", 4, []string{"m:latest", "x:latest"})
	c.SetGate(restrictedGate{})
	bal := testBalancer(t, nil, PolicyLeastConn, a, b, c)
	for range 2 {
		l, err := bal.Acquire(context.Background(), Request{Model: "m", Slot: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.Release)
		if l.Node == c {
			t.Fatal("first requests for m placed on restricted node c")
		}
	}
	return bal, []*Node{a, b, c}
}

func TestRestrictedNodeSkipsSharedModel(t *testing.T) {
	bal, nodes := restrictedFleet(t)
	c := nodes[2]
	if !c.Restricted() {
		t.Fatal("c not restricted")
	}
	for i := range 6 {
		l, err := bal.Acquire(context.Background(), Request{Model: "m", Slot: true})
		if err != nil {
			t.Fatalf("request %d for m: %v", i, err)
		}
		if l.Node == c {
			t.Errorf("request %d for m placed on restricted node c", i)
		}
		defer l.Release()
	}
	for _, n := range bal.Listing("m") {
		if n == c {
			t.Error("Listing(m) contains restricted node c")
		}
	}
	// A request that a and b failed, for example by refusing the
	// connection before the health checks mark them down, goes to c
	// rather than failing.
	l, err := bal.Acquire(context.Background(), Request{Model: "m", Tried: nodes[:2]})
	if err != nil {
		t.Fatalf("request for m that tried a and b: %v", err)
	}
	defer l.Release()
	if l.Node != c {
		t.Errorf("request for m that tried a and b placed on %s, want c", l.Node.Name)
	}
}

// ejectedGate keeps its node out for every model, as the health package
// does for a failing node whose models other nodes listed when it was
// taken out.
type ejectedGate struct{}

func (ejectedGate) Usable() bool     { return false }
func (ejectedGate) Restricted() bool { return false }

// TestEjectedNodeServesWhenOthersGone has the nodes that listed the model
// of an ejected node go down, or fail a request, after it was taken out.
// The ejected node takes the model's requests again, because no other
// node can.
func TestEjectedNodeServesWhenOthersGone(t *testing.T) {
	a := testNode(t, "a", 4, []string{"m:latest"})
	c := testNode(t, "c", 4, []string{"m:latest"})
	c.SetGate(ejectedGate{})
	bal := testBalancer(t, nil, PolicyLeastConn, a, c)

	l, err := bal.Acquire(context.Background(), Request{Model: "m", Slot: true})
	if err != nil {
		t.Fatal(err)
	}
	if l.Node != a {
		t.Errorf("request for m with a usable placed on %s, want a", l.Node.Name)
	}
	l.Release()

	l, err = bal.Acquire(context.Background(), Request{Model: "m", Tried: []*Node{a}})
	if err != nil {
		t.Fatalf("request for m that tried a: %v", err)
	}
	if l.Node != c {
		t.Errorf("request for m that tried a placed on %s, want c", l.Node.Name)
	}
	l.Release()

	a.SetUp(false)
	l, err = bal.Acquire(context.Background(), Request{Model: "m", Slot: true})
	if err != nil {
		t.Fatalf("request for m with a down: %v", err)
	}
	if l.Node != c {
		t.Errorf("request for m with a down placed on %s, want c", l.Node.Name)
	}
	l.Release()

	c.SetUp(false)
	if _, err := bal.Acquire(context.Background(), Request{Model: "m"}); !errors.Is(err, ErrNoNode) {
		t.Errorf("request for m with a and c down: err %v, want ErrNoNode", err)
	}
}

func TestRestrictedNodeServesSoleModel(t *testing.T) {
	bal, nodes := restrictedFleet(t)
	c := nodes[2]
	for _, slot := range []bool{true, false} {
		l, err := bal.Acquire(context.Background(), Request{Model: "x", Slot: slot})
		if err != nil {
			t.Fatalf("request for x (slot %v): %v", slot, err)
		}
		if l.Node != c {
			t.Errorf("request for x (slot %v) placed on %s, want c", slot, l.Node.Name)
		}
		l.Release()
	}
	if got := bal.Listing("x"); len(got) != 1 || got[0] != c {
		t.Errorf("Listing(x) = %v, want [c]", got)
	}
	if !bal.HasCandidate(Request{Model: "x"}) {
		t.Error("no candidate for x")
	}
}

func TestRestrictedNodeTakesOverWhenOthersDown(t *testing.T) {
	bal, nodes := restrictedFleet(t)
	a, b, c := nodes[0], nodes[1], nodes[2]
	a.SetUp(false)
	b.SetUp(false)
	l, err := bal.Acquire(context.Background(), Request{Model: "m", Slot: true})
	if err != nil {
		t.Fatalf("request for m with a and b down: %v", err)
	}
	defer l.Release()
	if l.Node != c {
		t.Errorf("request for m with a and b down placed on %s, want c", l.Node.Name)
	}
	if _, err := bal.Acquire(context.Background(), Request{}); err != nil {
		t.Errorf("request for any node with a and b down: %v", err)
	}
}

func TestRestrictedNodeServing(t *testing.T) {
	bal, nodes := restrictedFleet(t)
	c := nodes[2]
	for _, n := range bal.Usable() {
		if n == c {
			t.Error("Usable contains restricted node c")
		}
	}
	serving := bal.Serving()
	if len(serving) != 3 {
		t.Errorf("Serving returned %d nodes, want 3", len(serving))
	}
	c.SetDraining(true)
	if c.Restricted() {
		t.Error("draining node c still restricted")
	}
	if _, err := bal.Acquire(context.Background(), Request{Model: "x"}); !errors.Is(err, ErrNoNode) {
		t.Errorf("request for x with c draining: err %v, want ErrNoNode", err)
	}
}

// TestServingCountsOfferedEjectedNode checks that Serving, which the
// listings and /readyz use, counts an ejected node exactly while
// placement offers it.
func TestServingCountsOfferedEjectedNode(t *testing.T) {
	a := testNode(t, "a", 4, []string{"m:latest"})
	c := testNode(t, "c", 4, []string{"m:latest"})
	c.SetGate(ejectedGate{})
	bal := testBalancer(t, nil, PolicyLeastConn, a, c)

	if got := bal.Serving(); len(got) != 1 || got[0] != a {
		t.Errorf("Serving with a usable = %v, want [a]", names(got))
	}
	a.SetUp(false)
	if got := bal.Serving(); len(got) != 1 || got[0] != c {
		t.Errorf("Serving with a down = %v, want [c], which placement offers", names(got))
	}
}

func names(nodes []*Node) []string {
	var out []string
	for _, n := range nodes {
		out = append(out, n.Name)
	}
	return out
}
