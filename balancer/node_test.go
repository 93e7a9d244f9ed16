package balancer

import (
	"net/url"
	"sync"
	"testing"
	"time"
)

func TestNodeInventoryUpdates(t *testing.T) {
	u, _ := url.Parse("http://gpu1:11434")
	n := NewNode("gpu1", u, 2, 1)
	n.SetInventory([]Model{{Name: "a:latest"}, {Name: "b:latest"}}, []Loaded{{Name: "a:latest", NumCtx: 4096}}, time.Unix(10, 0))

	if !n.HasModel("b:latest") {
		t.Error("HasModel(b) = false, want true")
	}
	if n.HasModel("c:latest") {
		t.Error("HasModel(c) = true for an unlisted model")
	}
	if !n.IsLoaded("a:latest", 4096) {
		t.Error("IsLoaded(a, 4096) = false for the loaded context size")
	}
	if n.IsLoaded("a:latest", 8192) {
		t.Error("IsLoaded(a, 8192) = true for another context size")
	}
	if !n.IsLoaded("a:latest", 0) {
		t.Error("IsLoaded(a, 0) = false, want any context size to match")
	}

	n.MarkLoaded("a:latest", 8192)
	if !n.IsLoaded("a:latest", 8192) {
		t.Error("after MarkLoaded(a, 8192): IsLoaded(a, 8192) = false")
	}
	if n.IsLoaded("a:latest", 4096) {
		t.Error("after MarkLoaded(a, 8192): the old context size 4096 still matches")
	}

	n.MarkLoaded("b:latest", 0)
	n.MarkUnloaded("a:latest")
	loaded := n.LoadedModels()
	if len(loaded) != 1 || loaded[0].Name != "b:latest" {
		t.Errorf("loaded = %+v, want only b:latest", loaded)
	}

	n.SetModels([]Model{{Name: "c:latest"}})
	if n.HasModel("a:latest") {
		t.Error("after SetModels: a is still listed")
	}
	if !n.HasModel("c:latest") {
		t.Error("after SetModels: c is not listed")
	}
	if !n.IsLoaded("b:latest", 0) {
		t.Error("SetModels changed the loaded models")
	}
	if got := n.Refreshed(); !got.Equal(time.Unix(10, 0)) {
		t.Errorf("refreshed = %v, want the time of SetInventory", got)
	}
}

func TestNodeMarkRemoved(t *testing.T) {
	u, _ := url.Parse("http://gpu1:11434")
	n := NewNode("gpu1", u, 2, 1)
	n.SetInventory([]Model{{Name: "a:latest"}, {Name: "b:latest"}}, []Loaded{{Name: "a:latest"}},
		time.Unix(10, 0))

	n.MarkRemoved("A")
	if n.HasModel("a:latest") {
		t.Error("after MarkRemoved(A): a is still listed")
	}
	if n.IsLoaded("a:latest", 0) {
		t.Error("after MarkRemoved(A): a is still loaded")
	}
	if !n.HasModel("b:latest") {
		t.Error("MarkRemoved(A) removed b as well")
	}
	if !n.ModelsListed() {
		t.Error("MarkRemoved made the model list unknown")
	}
	n.MarkRemoved("zzz")
	if got := len(n.Models()); got != 1 {
		t.Errorf("after removing a model the node lacks: %d models listed, want 1", got)
	}
}

// TestNodeInventoryConcurrentUse runs readers against every kind of
// writer, for the race detector, and checks that no update is lost.
func TestNodeInventoryConcurrentUse(t *testing.T) {
	u, _ := url.Parse("http://gpu1:11434")
	n := NewNode("gpu1", u, 2, 1)
	names := []string{"a:latest", "b:latest", "c:latest", "d:latest"}
	var wg sync.WaitGroup
	for _, name := range names {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range 500 {
				n.MarkLoaded(name, 0)
			}
		}()
		go func() {
			defer wg.Done()
			for range 500 {
				_ = n.IsLoaded(name, 0)
				_ = n.HasModel(name)
				_ = n.Models()
			}
		}()
	}
	wg.Wait()
	if got := len(n.LoadedModels()); got != len(names) {
		t.Errorf("%d models loaded, want %d: a concurrent mark was lost", got, len(names))
	}

	wg.Add(2)
	go func() {
		defer wg.Done()
		for range 200 {
			n.SetLoaded([]Loaded{{Name: "a:latest"}})
		}
	}()
	go func() {
		defer wg.Done()
		for range 200 {
			n.MarkUnloaded("b:latest")
			n.SetModels([]Model{{Name: "a:latest"}})
		}
	}()
	wg.Wait()
	if !n.IsLoaded("a:latest", 0) {
		t.Errorf("a is not loaded after the writers: loaded %+v", n.LoadedModels())
	}
	if n.IsLoaded("b:latest", 0) {
		t.Errorf("b is loaded after the writers: loaded %+v", n.LoadedModels())
	}
	if !n.HasModel("a:latest") {
		t.Error("a is not listed after the writers")
	}
}

// closed reports whether ch is closed.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestNodeDownChannel(t *testing.T) {
	u, _ := url.Parse("http://gpu1:11434")
	n := NewNode("gpu1", u, 1, 1)
	up := n.Down()
	if closed(up) {
		t.Fatal("Down() is closed for a node that is up")
	}
	if n.SetUp(true) {
		t.Error("SetUp(true) on an up node reported a change")
	}
	if closed(up) {
		t.Error("SetUp(true) closed Down()")
	}

	if !n.SetUp(false) {
		t.Error("SetUp(false) on an up node reported no change")
	}
	if !closed(up) {
		t.Error("Down() taken while up is still open after SetUp(false)")
	}
	if !closed(n.Down()) {
		t.Error("Down() is open for a node that is down")
	}
	if n.SetUp(false) {
		t.Error("SetUp(false) on a down node reported a change")
	}

	n.SetUp(true)
	if closed(n.Down()) {
		t.Error("Down() is closed after the node came back up")
	}
}

// countingListener counts the NodeDown calls it gets.
type countingListener struct {
	link  DownLink
	calls int
}

func (l *countingListener) NodeDown() { l.calls++ }

func TestNodeDownListeners(t *testing.T) {
	u, _ := url.Parse("http://gpu1:11434")
	n := NewNode("gpu1", u, 1, 1)
	var first, middle, last, removed countingListener
	for _, l := range []*countingListener{&first, &middle, &last, &removed} {
		if !n.WatchDown(&l.link, l) {
			t.Fatal("WatchDown on an up node returned false")
		}
	}
	if !n.UnwatchDown(&removed.link) {
		t.Error("UnwatchDown of a listed link returned false")
	}
	if n.UnwatchDown(&removed.link) {
		t.Error("second UnwatchDown of the same link returned true")
	}
	// Removing one from the middle of the list keeps the others linked.
	if !n.UnwatchDown(&middle.link) {
		t.Error("UnwatchDown of the middle link returned false")
	}
	if !n.WatchDown(&middle.link, &middle) {
		t.Fatal("WatchDown of a link removed earlier returned false")
	}

	n.SetUp(false)
	for name, l := range map[string]*countingListener{"first": &first, "middle": &middle, "last": &last} {
		if l.calls != 1 {
			t.Errorf("%s listener got %d NodeDown calls, want 1", name, l.calls)
		}
		if n.UnwatchDown(&l.link) {
			t.Errorf("UnwatchDown of the %s link returned true after SetUp(false) removed it", name)
		}
	}
	if removed.calls != 0 {
		t.Errorf("removed listener got %d NodeDown calls, want 0", removed.calls)
	}

	var late countingListener
	if n.WatchDown(&late.link, &late) {
		t.Error("WatchDown on a down node returned true")
	}
	n.SetUp(true)
	n.SetUp(false)
	if late.calls != 0 || first.calls != 1 {
		t.Errorf("a second down reached listeners that were not listed: late %d, first %d calls",
			late.calls, first.calls)
	}

	n.SetUp(true)
	if !n.WatchDown(&late.link, &late) {
		t.Fatal("WatchDown on a node back up returned false")
	}
	n.SetUp(false)
	if late.calls != 1 {
		t.Errorf("listener added after the node came back up got %d calls, want 1", late.calls)
	}
}

func TestSetInventoryReportsModelChanges(t *testing.T) {
	u, _ := url.Parse("http://gpu1:11434")
	n := NewNode("gpu1", u, 2, 1)
	list := []Model{
		{Name: "a:latest", Digest: "d1"},
		{Name: "b:latest", Digest: "d2"},
		{Name: "c:latest", Digest: "d3"},
		{Name: "e:latest", Digest: "d5"},
	}
	if got := n.SetInventory(list, nil, time.Unix(10, 0)); len(got) != 0 {
		t.Errorf("first list: changes %+v, want none", got)
	}
	if got := n.SetInventory(list, nil, time.Unix(20, 0)); len(got) != 0 {
		t.Errorf("same list again: changes %+v, want none", got)
	}

	// MarkRemoved takes a out of the list before the poll, so its absence
	// is no change. b changes its digest, c goes, d is new, and e loses
	// its digest.
	n.MarkRemoved("a")
	got := n.SetInventory([]Model{
		{Name: "b:latest", Digest: "d9"},
		{Name: "d:latest", Digest: "d4"},
		{Name: "e:latest"},
	}, nil, time.Unix(30, 0))
	want := []ModelChange{{Name: "b:latest"}, {Name: "c:latest", Removed: true}}
	if len(got) != len(want) {
		t.Fatalf("changes %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("change %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}
