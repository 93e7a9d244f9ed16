package main

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestDueQueuePopsInDueOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	base := time.Now()
	var q dueQueue
	for range 1000 {
		q.push(&stream{due: base.Add(time.Duration(rng.IntN(1e6)))})
	}

	last := base
	check := func(st *stream) {
		t.Helper()
		if st.due.Before(last) {
			t.Fatalf("popped %v after %v", st.due.Sub(base), last.Sub(base))
		}
		last = st.due
	}
	// Requeue each popped stream later, as the pacer does.
	for range 5000 {
		st := q.pop()
		check(st)
		st.due = st.due.Add(time.Duration(rng.IntN(1e6)))
		q.push(st)
	}
	popped := 0
	for q.len() > 0 {
		check(q.pop())
		popped++
	}
	if popped != 1000 {
		t.Errorf("drained %d streams, want the 1000 pushed", popped)
	}
}
