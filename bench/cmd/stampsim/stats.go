package main

import (
	"encoding/json"
	"net/http"
	"sync"
	"sync/atomic"
)

// leanStats counts the lean streams for GET /_sim/stats.
type leanStats struct {
	cancelled atomic.Int64 // streams whose write failed, stalled ones included
	rejected  atomic.Int64 // 503 "server busy" responses
	stalled   atomic.Int64 // streams dropped because the client stopped reading

	mu       sync.Mutex // guards the maps
	requests map[string]int64
	models   map[string]int64
}

func newLeanStats() *leanStats {
	return &leanStats{
		requests: make(map[string]int64),
		models:   make(map[string]int64),
	}
}

// received counts a request to route for the model of key modelKey.
func (ls *leanStats) received(route, modelKey string) {
	ls.mu.Lock()
	ls.requests[route]++
	ls.models[modelKey]++
	ls.mu.Unlock()
}

// withLeanStats returns next, except that GET /_sim/stats returns the
// node's counters plus those of the lean streams.
func (s *server) withLeanStats(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/_sim/stats" || (r.Method != http.MethodGet && r.Method != http.MethodHead) {
			next.ServeHTTP(w, r)
			return
		}
		st := s.node.Stats()
		s.stats.mu.Lock()
		for route, n := range s.stats.requests {
			st.Requests[route] += n
		}
		for model, n := range s.stats.models {
			st.ModelRequests[model] += n
		}
		s.stats.mu.Unlock()
		active, waiting := s.slots.counts()
		st.Active += active
		st.Waiting += waiting
		st.InFlight += int64(active + waiting)
		st.Cancelled += s.stats.cancelled.Load()
		st.Rejected += s.stats.rejected.Load()

		// The same encoding and content type as ollamasim's own response.
		body, err := json.Marshal(st)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.Write(body)
	})
}
