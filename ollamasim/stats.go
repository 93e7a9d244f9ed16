package ollamasim

import (
	"context"
	"maps"
	"net/http"
	"sync"
	"sync/atomic"
)

// RouteUnmatched is the route key of requests that matched no route.
const RouteUnmatched = "(unmatched)"

// Stats is a snapshot of the node's counters. Route keys are path patterns
// such as "/api/generate", "/v1/models/{model}" and "/". Model keys are
// normalised names such as "llama3:latest".
type Stats struct {
	// Requests counts requests received per route, including those that
	// failed, were refused by a fault or were rejected as busy. Control
	// routes are not counted.
	Requests map[string]int64 `json:"requests"`

	// ModelRequests counts requests received per model named in the body.
	ModelRequests map[string]int64 `json:"model_requests"`

	// Loads counts cold loads per model, reloads for another num_ctx
	// included.
	Loads map[string]int64 `json:"loads"`

	// Loaded lists the models loaded now, as /api/ps shows them.
	Loaded []string `json:"loaded"`

	// Cancelled counts requests whose client went away before the response
	// was complete.
	Cancelled int64 `json:"cancelled"`

	// Rejected counts 503 "server busy" responses sent because the queue
	// was full. The Busy fault is not counted.
	Rejected int64 `json:"rejected"`

	// InFlight counts requests inside a handler now, waiting ones included.
	InFlight int64 `json:"in_flight"`

	// Waiting counts requests queued for a slot or a load.
	Waiting int `json:"waiting"`

	// Active counts slots in use.
	Active int `json:"active"`
}

// RecordedRequest is a copy of a request as the node received it.
type RecordedRequest struct {
	Method string
	// RequestURI is the target as sent on the request line, query included.
	RequestURI string
	Host       string
	// RemoteAddr is the client's address and port, which tells the
	// connections a client reused.
	RemoteAddr string
	Header     http.Header
	Body       []byte
}

// recorder holds the counters behind Stats and the last request per route.
type recorder struct {
	cancelled atomic.Int64
	rejected  atomic.Int64
	inFlight  atomic.Int64

	mu       sync.Mutex // guards the maps
	requests map[string]int64
	models   map[string]int64
	last     map[string]RecordedRequest

	changes broadcaster
}

func newRecorder() *recorder {
	return &recorder{
		requests: make(map[string]int64),
		models:   make(map[string]int64),
		last:     make(map[string]RecordedRequest),
		changes:  broadcaster{ch: make(chan struct{})},
	}
}

// received counts a request to route and keeps a copy of it. model is the
// "model" field of the body, empty when it had none.
func (rc *recorder) received(route, model string, req RecordedRequest) {
	rc.mu.Lock()
	rc.requests[route]++
	if model != "" {
		rc.models[modelKey(model)]++
	}
	rc.last[route] = req
	rc.mu.Unlock()
	rc.changes.notify()
}

func (rc *recorder) noteCancelled() {
	rc.cancelled.Add(1)
	rc.changes.notify()
}

func (rc *recorder) noteRejected() {
	rc.rejected.Add(1)
	rc.changes.notify()
}

func (rc *recorder) enter() {
	rc.inFlight.Add(1)
	rc.changes.notify()
}

func (rc *recorder) exit() {
	rc.inFlight.Add(-1)
	rc.changes.notify()
}

// broadcaster wakes every waiter on each change by closing a channel and
// replacing it.
type broadcaster struct {
	mu sync.Mutex // guards ch
	ch chan struct{}
}

func (b *broadcaster) notify() {
	b.mu.Lock()
	defer b.mu.Unlock()
	close(b.ch)
	b.ch = make(chan struct{})
}

// wait returns a channel closed at the next change.
func (b *broadcaster) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ch
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	sched := s.sched.snapshot()
	st := Stats{
		Loads:     sched.loads,
		Loaded:    make([]string, 0, len(sched.loaded)),
		Cancelled: s.rec.cancelled.Load(),
		Rejected:  s.rec.rejected.Load(),
		InFlight:  s.rec.inFlight.Load(),
		Waiting:   sched.waiting,
		Active:    sched.active,
	}
	for _, m := range sched.loaded {
		st.Loaded = append(st.Loaded, m.name)
	}
	s.rec.mu.Lock()
	st.Requests = maps.Clone(s.rec.requests)
	st.ModelRequests = maps.Clone(s.rec.models)
	s.rec.mu.Unlock()
	return st
}

// WaitFor blocks until cond returns true for a snapshot of the counters, or
// until ctx is done, and returns ctx's error in that case. cond runs on the
// caller's goroutine after every change of the counters, the scheduler or
// the faults, so it may also test Faults.
func (s *Server) WaitFor(ctx context.Context, cond func(Stats) bool) error {
	for {
		changed := s.rec.changes.wait()
		if cond(s.Stats()) {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Requests returns the number of requests received on route, such as
// "/api/generate".
func (s *Server) Requests(route string) int64 {
	s.rec.mu.Lock()
	defer s.rec.mu.Unlock()
	return s.rec.requests[route]
}

// ModelRequests returns the number of requests received for model. The name
// is normalised: "llama3" counts "llama3:latest".
func (s *Server) ModelRequests(model string) int64 {
	s.rec.mu.Lock()
	defer s.rec.mu.Unlock()
	return s.rec.models[modelKey(model)]
}

// Cancelled returns the number of requests whose client went away before
// the response was complete.
func (s *Server) Cancelled() int64 {
	return s.rec.cancelled.Load()
}

// InFlight returns the number of requests inside a handler now.
func (s *Server) InFlight() int64 {
	return s.rec.inFlight.Load()
}

// Loads returns the number of cold loads of model.
func (s *Server) Loads(model string) int64 {
	return s.sched.snapshot().loads[modelKey(model)]
}

// LoadedModels returns the names of the loaded models, as /api/ps lists them.
func (s *Server) LoadedModels() []string {
	return s.Stats().Loaded
}

// LastRequest returns a copy of the last request received on route, and
// false when there was none.
func (s *Server) LastRequest(route string) (RecordedRequest, bool) {
	s.rec.mu.Lock()
	defer s.rec.mu.Unlock()
	req, ok := s.rec.last[route]
	return req, ok
}
