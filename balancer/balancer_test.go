package balancer

import (
	"context"
	"errors"
	"net/url"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/config"
	"github.com/llmproxy/llmproxy/internal/testclock"
)

func testNode(t *testing.T, name string, slots int, models []string, loaded ...string) *Node {
	t.Helper()
	u, _ := url.Parse("http://" + name + ":11434")
	n := NewNode(name, u, slots, 1)
	var ms []Model
	for _, m := range models {
		ms = append(ms, Model{Name: m})
	}
	var ls []Loaded
	for _, m := range loaded {
		ls = append(ls, Loaded{Name: m})
	}
	n.SetInventory(ms, ls, time.Time{})
	return n
}

func testBalancer(t *testing.T, clock *testclock.Clock, policy string, nodes ...*Node) *Balancer {
	t.Helper()
	cfg := config.Default()
	s := SettingsFrom(&cfg)
	s.Policy = policy
	s.Aging = 10 * time.Second
	if clock != nil {
		s.Clock = clock.Now
	}
	return New(s, nodes, nil)
}

// queued is a request started by enqueue, with channels that receive its
// lease or its error.
type queued struct {
	name  string
	lease chan *Lease
	err   chan error
}

// enqueue starts Acquire in a goroutine and waits until the request is in
// the queue, so that arrival order is the call order.
func enqueue(t *testing.T, b *Balancer, name string, req Request) *queued {
	t.Helper()
	q := &queued{name: name, lease: make(chan *Lease, 1), err: make(chan error, 1)}
	before := len(b.Waiting())
	go func() {
		l, err := b.Acquire(context.Background(), req)
		if err != nil {
			q.err <- err
			return
		}
		q.lease <- l
	}()
	deadline := time.Now().Add(5 * time.Second)
	for len(b.Waiting()) == before {
		if time.Now().After(deadline) {
			t.Fatalf("%s never queued", name)
		}
		time.Sleep(time.Millisecond)
	}
	return q
}

// releaseOrder frees the held lease, then records which queued request got
// the slot, one at a time.
func releaseOrder(t *testing.T, held *Lease, qs []*queued) []string {
	t.Helper()
	var order []string
	for range qs {
		held.Release()
		select {
		case l := <-anyLease(qs, &order):
			held = l
		case <-time.After(5 * time.Second):
			t.Fatalf("no request placed after a release; order so far %v", order)
		}
	}
	held.Release()
	return order
}

func anyLease(qs []*queued, order *[]string) <-chan *Lease {
	out := make(chan *Lease, 1)
	go func() {
		for {
			for _, q := range qs {
				select {
				case l := <-q.lease:
					*order = append(*order, q.name)
					out <- l
					return
				default:
				}
			}
			time.Sleep(time.Millisecond)
		}
	}()
	return out
}

func slotReq(class, client string) Request {
	return Request{Model: "a:latest", Slot: true, Class: class, Client: client}
}

func TestPriorityClassesOrder(t *testing.T) {
	clock := testclock.New(time.Unix(1000, 0))
	b := testBalancer(t, clock, PolicyInferenceAware, testNode(t, "n1", 1, []string{"a:latest"}, "a:latest"))
	held, err := b.Acquire(context.Background(), slotReq("standard", "x"))
	if err != nil {
		t.Fatal(err)
	}
	qs := []*queued{
		enqueue(t, b, "batch", slotReq("batch", "c1")),
		enqueue(t, b, "standard", slotReq("standard", "c2")),
		enqueue(t, b, "priority", slotReq("priority", "c3")),
	}
	got := releaseOrder(t, held, qs)
	want := []string{"priority", "standard", "batch"}
	if !equal(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
}

func TestAgingLiftsBatch(t *testing.T) {
	clock := testclock.New(time.Unix(1000, 0))
	b := testBalancer(t, clock, PolicyInferenceAware, testNode(t, "n1", 1, []string{"a:latest"}, "a:latest"))
	held, _ := b.Acquire(context.Background(), slotReq("standard", "x"))
	old := enqueue(t, b, "old-batch", slotReq("batch", "c1"))
	// Two agings later the batch request ranks with priority requests and,
	// having waited longer, goes first.
	clock.Advance(25 * time.Second)
	fresh := enqueue(t, b, "fresh-priority", slotReq("priority", "c2"))
	got := releaseOrder(t, held, []*queued{old, fresh})
	if got[0] != "old-batch" {
		t.Errorf("order %v, want the aged batch request first", got)
	}
}

func TestFairSharingWithinClass(t *testing.T) {
	clock := testclock.New(time.Unix(1000, 0))
	b := testBalancer(t, clock, PolicyInferenceAware, testNode(t, "n1", 1, []string{"a:latest"}, "a:latest"))
	held, _ := b.Acquire(context.Background(), slotReq("standard", "x"))
	var qs []*queued
	for i := 0; i < 6; i++ {
		qs = append(qs, enqueue(t, b, "A", slotReq("standard", "A")))
	}
	for i := 0; i < 2; i++ {
		qs = append(qs, enqueue(t, b, "B", slotReq("standard", "B")))
	}
	got := releaseOrder(t, held, qs)
	// B's two requests are served among A's first ones, not after all six.
	lastB := 0
	for i, name := range got {
		if name == "B" {
			lastB = i
		}
	}
	if lastB > 3 {
		t.Errorf("order %v: client B waited behind client A's burst", got)
	}
}

func TestQueueLimits(t *testing.T) {
	b := testBalancer(t, nil, PolicyInferenceAware, testNode(t, "n1", 1, []string{"a:latest"}, "a:latest"))
	b.mu.Lock()
	b.settings.Classes = map[string]config.QueueClass{
		"standard": {MaxLength: 1, MaxWait: 50 * time.Millisecond},
	}
	b.mu.Unlock()
	held, _ := b.Acquire(context.Background(), slotReq("standard", "x"))
	defer held.Release()
	q := enqueue(t, b, "first", slotReq("standard", "y"))
	if _, err := b.Acquire(context.Background(), slotReq("standard", "z")); !errors.Is(err, ErrQueueFull) {
		t.Errorf("second waiter: %v, want ErrQueueFull", err)
	}
	select {
	case err := <-q.err:
		if !errors.Is(err, ErrQueueTimeout) {
			t.Errorf("waiter: %v, want ErrQueueTimeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("waiter never timed out")
	}
	if d := b.Depth()["standard"]; d != 0 {
		t.Errorf("depth %d after the timeout, want 0", d)
	}
}

func TestRemovedModelFailsWaiters(t *testing.T) {
	n1 := testNode(t, "n1", 1, []string{"a:latest", "b:latest"}, "a:latest")
	n2 := testNode(t, "n2", 1, []string{"b:latest"})
	b := testBalancer(t, nil, PolicyInferenceAware, n1, n2)
	held, err := b.Acquire(context.Background(), slotReq("standard", "x"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	holdB, err := b.Acquire(context.Background(), Request{Model: "b:latest", Slot: true, Client: "x"})
	if err != nil {
		t.Fatal(err)
	}
	defer holdB.Release()
	forA := enqueue(t, b, "a", slotReq("standard", "y"))
	forB := enqueue(t, b, "b", Request{Model: "b:latest", Slot: true, Class: "standard", Client: "y"})

	// n1, the only node with model a, leaves the set.
	b.SetNodes([]*Node{n2})
	select {
	case err := <-forA.err:
		if !errors.Is(err, ErrModelNotFound) {
			t.Errorf("waiter for a: %v, want ErrModelNotFound", err)
		}
	case l := <-forA.lease:
		l.Release()
		t.Error("waiter for a got a lease with no node listing a")
	case <-time.After(5 * time.Second):
		t.Fatal("waiter for a still waits after its model left the node set")
	}
	// Model b is still on n2, so its waiter keeps waiting for n2's slot.
	select {
	case err := <-forB.err:
		t.Fatalf("waiter for b failed: %v", err)
	case l := <-forB.lease:
		l.Release()
		t.Fatal("waiter for b got a lease while n2's one slot is taken")
	case <-time.After(100 * time.Millisecond):
	}
	if got := len(b.Waiting()); got != 1 {
		t.Errorf("%d requests waiting, want 1", got)
	}
	holdB.Release()
	select {
	case l := <-forB.lease:
		l.Release()
	case err := <-forB.err:
		t.Fatalf("waiter for b: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("waiter for b never got n2's slot")
	}
}

func TestCancelledWaiterLeavesQueue(t *testing.T) {
	b := testBalancer(t, nil, PolicyInferenceAware, testNode(t, "n1", 1, []string{"a:latest"}, "a:latest"))
	held, _ := b.Acquire(context.Background(), slotReq("standard", "x"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := b.Acquire(ctx, slotReq("standard", "y"))
		done <- err
	}()
	for len(b.Waiting()) == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("err %v, want context.Canceled", err)
	}
	if len(b.Waiting()) != 0 {
		t.Error("cancelled request still queued")
	}
	held.Release()
	if n := b.Node("n1"); n.slots != 0 || n.Inflight() != 0 {
		t.Errorf("slots %d, inflight %d after all released", n.slots, n.Inflight())
	}
}

func TestLoadedModelsAvoidSwaps(t *testing.T) {
	both := []string{"a:latest", "b:latest"}
	n1 := testNode(t, "n1", 2, both, "a:latest")
	n2 := testNode(t, "n2", 2, both, "b:latest")
	b := testBalancer(t, nil, PolicyInferenceAware, n1, n2)
	for i := 0; i < 20; i++ {
		model := "a:latest"
		want := "n1"
		if i%2 == 1 {
			model, want = "b:latest", "n2"
		}
		l, err := b.Acquire(context.Background(), Request{Model: model, Slot: true})
		if err != nil {
			t.Fatal(err)
		}
		if l.Node.Name != want {
			t.Fatalf("request %d for %s went to %s, want %s", i, model, l.Node.Name, want)
		}
		if l.Cold {
			t.Fatalf("request %d for %s placed cold on %s, want warm", i, model, l.Node.Name)
		}
		l.Release()
	}
}

func TestBusyLoadedNodeBeatsColdIdleNode(t *testing.T) {
	n1 := testNode(t, "n1", 1, []string{"a:latest"}, "a:latest")
	n2 := testNode(t, "n2", 1, []string{"a:latest"})
	b := testBalancer(t, nil, PolicyInferenceAware, n1, n2)
	held, _ := b.Acquire(context.Background(), Request{Model: "a:latest", Slot: true})
	if held.Node != n1 {
		t.Fatalf("first request on %s, want n1 where a is loaded", held.Node.Name)
	}
	// With the default estimates a load (5s) takes longer than waiting for
	// n1 (2s), so the request waits for n1.
	q := enqueue(t, b, "second", Request{Model: "a:latest", Slot: true})
	held.Release()
	select {
	case l := <-q.lease:
		if l.Node != n1 {
			t.Errorf("second request placed on %s, want n1", l.Node.Name)
		}
		l.Release()
	case <-time.After(5 * time.Second):
		t.Fatal("second request never placed")
	}
}

func TestConversationAffinity(t *testing.T) {
	n1 := testNode(t, "n1", 4, []string{"a:latest"}, "a:latest")
	n2 := testNode(t, "n2", 4, []string{"a:latest"}, "a:latest")
	b := testBalancer(t, nil, PolicyInferenceAware, n1, n2)
	req := Request{Model: "a:latest", Slot: true, Affinity: 42}
	first, _ := b.Acquire(context.Background(), req)
	first.Release()
	for turn := 0; turn < 10; turn++ {
		l, _ := b.Acquire(context.Background(), req)
		if l.Node != first.Node {
			t.Fatalf("turn %d went to %s, want %s", turn, l.Node.Name, first.Node.Name)
		}
		l.Release()
	}
	// Concurrent turns fill the home node only up to the load bound, and
	// the rest go to the other node.
	var hold []*Lease
	home := 0
	for i := 0; i < 4; i++ {
		l, _ := b.Acquire(context.Background(), req)
		if l.Node == first.Node {
			home++
		}
		hold = append(hold, l)
	}
	for _, l := range hold {
		l.Release()
	}
	if home < 2 || home == 4 {
		t.Errorf("%d of 4 concurrent turns on the home node, want at least 2 but not all", home)
	}
}

func TestPolicies(t *testing.T) {
	for _, policy := range []string{PolicyRoundRobin, PolicyLeastConn} {
		t.Run(policy, func(t *testing.T) {
			n1 := testNode(t, "n1", 8, []string{"a:latest"}, "a:latest")
			n2 := testNode(t, "n2", 8, []string{"a:latest"})
			b := testBalancer(t, nil, policy, n1, n2)
			seen := map[string]int{}
			var held []*Lease
			for i := 0; i < 8; i++ {
				l, err := b.Acquire(context.Background(), Request{Model: "a:latest", Slot: true})
				if err != nil {
					t.Fatal(err)
				}
				seen[l.Node.Name]++
				held = append(held, l)
			}
			for _, l := range held {
				l.Release()
			}
			if seen["n1"] != 4 || seen["n2"] != 4 {
				t.Errorf("spread %v, want 4 and 4 regardless of loaded models", seen)
			}
		})
	}
}

func TestUnknownModelAndNoNode(t *testing.T) {
	n1 := testNode(t, "n1", 1, []string{"a:latest"})
	b := testBalancer(t, nil, PolicyInferenceAware, n1)
	if _, err := b.Acquire(context.Background(), Request{Model: "zz:latest", Slot: true}); !errors.Is(err, ErrModelNotFound) {
		t.Errorf("unknown model: %v", err)
	}
	n1.SetUp(false)
	if _, err := b.Acquire(context.Background(), Request{Model: "a:latest", Slot: true}); !errors.Is(err, ErrNoNode) {
		t.Errorf("down node: %v", err)
	}
}

func TestUnlistedModelWithUnknownLists(t *testing.T) {
	u, _ := url.Parse("http://n2:11434")
	n1 := testNode(t, "n1", 1, []string{"a:latest"})
	never := NewNode("n2", u, 1, 1) // never polled
	b := testBalancer(t, nil, PolicyInferenceAware, n1, never)
	_, err := b.Acquire(context.Background(), Request{Model: "zz:latest", Slot: true})
	if !errors.Is(err, ErrModelsUnknown) || !errors.Is(err, ErrNoNode) {
		t.Errorf("model on no known list, n2 never polled: %v, want ErrModelsUnknown", err)
	}
	never.SetInventory(nil, nil, time.Time{})
	never.SetUp(false)
	_, err = b.Acquire(context.Background(), Request{Model: "zz:latest", Slot: true})
	if !errors.Is(err, ErrModelsUnknown) {
		t.Errorf("model on no known list, n2 down: %v, want ErrModelsUnknown", err)
	}
	never.SetUp(true)
	_, err = b.Acquire(context.Background(), Request{Model: "zz:latest", Slot: true})
	if !errors.Is(err, ErrModelNotFound) {
		t.Errorf("model on no list, every list known: %v, want ErrModelNotFound", err)
	}
}

func TestModelNamesIgnoreCase(t *testing.T) {
	n1 := testNode(t, "n1", 4, []string{"Llama3.2:1b"})
	n2 := testNode(t, "n2", 4, []string{"llama3.2:1b"}, "LLAMA3.2:1B")
	b := testBalancer(t, nil, PolicyInferenceAware, n1, n2)
	if !n1.HasModel("llama3.2:1B") || !n2.IsLoaded("Llama3.2:1b", 0) {
		t.Error("inventory lookups depend on case")
	}
	for _, model := range []string{"LLAMA3.2:1B", "llama3.2:1b", "registry.ollama.ai/library/Llama3.2:1b"} {
		l, err := b.Acquire(context.Background(), Request{Model: model, Slot: true})
		if err != nil {
			t.Fatalf("%s: %v", model, err)
		}
		if l.Node != n2 {
			t.Errorf("%s placed on %s, want n2 where it is loaded", model, l.Node.Name)
		}
		l.Release()
	}
	n2.MarkUnloaded("Llama3.2:1B")
	if n2.IsLoaded("llama3.2:1b", 0) {
		t.Error("MarkUnloaded in another case left the model loaded")
	}
	n1.MarkLoaded("LLAMA3.2:1B", 0)
	if got := n1.LoadedModels(); len(got) != 1 || got[0].Name != "Llama3.2:1b" {
		t.Errorf("loaded models after MarkLoaded %v, want the listed name Llama3.2:1b", got)
	}
}

func TestWarmRequestSkipsColdNodes(t *testing.T) {
	cold := testNode(t, "cold", 4, []string{"a:latest"})
	warm := testNode(t, "warm", 4, []string{"a:latest"}, "a:latest")
	b := testBalancer(t, nil, PolicyRoundRobin, cold, warm)
	for i := 0; i < 4; i++ {
		l, err := b.Acquire(context.Background(), Request{Model: "a:latest", Slot: true, Warm: true})
		if err != nil {
			t.Fatal(err)
		}
		if l.Node != warm {
			t.Errorf("warm request %d placed on %s", i, l.Node.Name)
		}
		l.Release()
	}
	req := Request{Model: "a:latest", Slot: true, Warm: true, Tried: []*Node{warm}}
	if b.HasCandidate(req) {
		t.Error("a warm request has a candidate when only a cold node is left")
	}
	if _, err := b.Acquire(context.Background(), req); !errors.Is(err, ErrNoNode) {
		t.Errorf("warm request with only a cold node left: %v, want ErrNoNode", err)
	}

	// A node whose loaded models were never polled may have the model
	// loaded.
	u, _ := url.Parse("http://unpolled:11434")
	unpolled := NewNode("unpolled", u, 4, 1)
	unpolled.SetModels([]Model{{Name: "a:latest"}})
	b.SetNodes([]*Node{cold, warm, unpolled})
	l, err := b.Acquire(context.Background(), req)
	if err != nil {
		t.Fatalf("warm request with an unpolled node left: %v", err)
	}
	if l.Node != unpolled {
		t.Errorf("placed on %s, want unpolled", l.Node.Name)
	}
	l.Release()
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func BenchmarkAcquireRelease(b *testing.B) {
	nodes := []*Node{}
	for i := 0; i < 8; i++ {
		u, _ := url.Parse("http://node:11434")
		n := NewNode("n"+string(rune('a'+i)), u, 64, 1)
		n.SetInventory([]Model{{Name: "a:latest"}, {Name: "b:latest"}}, []Loaded{{Name: "a:latest"}}, time.Time{})
		nodes = append(nodes, n)
	}
	cfg := config.Default()
	bal := New(SettingsFrom(&cfg), nodes, nil)
	req := Request{Model: "a:latest", Slot: true, Class: "standard", Client: "c", Affinity: 7}
	b.ReportAllocs()
	for b.Loop() {
		l, err := bal.Acquire(context.Background(), req)
		if err != nil {
			b.Fatal(err)
		}
		l.Release()
	}
}

// BenchmarkPolicies places and releases one request at a time on eight idle
// nodes with unequal weights, so that every placement breaks a tie.
func BenchmarkPolicies(b *testing.B) {
	for _, policy := range []string{PolicyInferenceAware, PolicyLeastConn, PolicyRoundRobin} {
		b.Run(policy, func(b *testing.B) {
			var nodes []*Node
			for i := 0; i < 8; i++ {
				u, _ := url.Parse("http://node:11434")
				n := NewNode("n"+string(rune('a'+i)), u, 64, float64(1+i%3))
				n.SetInventory([]Model{{Name: "a:latest"}}, []Loaded{{Name: "a:latest"}}, time.Time{})
				nodes = append(nodes, n)
			}
			cfg := config.Default()
			s := SettingsFrom(&cfg)
			s.Policy = policy
			bal := New(s, nodes, nil)
			req := Request{Model: "a:latest", Slot: true, Class: "standard", Client: "c"}
			b.ReportAllocs()
			for b.Loop() {
				l, err := bal.Acquire(context.Background(), req)
				if err != nil {
					b.Fatal(err)
				}
				l.Release()
			}
		})
	}
}
