package statuspage

import (
	"sync"
	"time"
	"unicode/utf8"
)

// Limits of one ErrorRecord's text, so that a client sending huge model
// names cannot grow the buffer beyond capacity times a few KiB.
const (
	// MaxErrorBytes bounds ErrorRecord.Error.
	MaxErrorBytes = 1024
	// MaxFieldBytes bounds every other string field of an ErrorRecord.
	MaxFieldBytes = 256
)

// DefaultRecentErrors is the capacity NewRecentErrors uses for a
// capacity of 0 or less.
const DefaultRecentErrors = 50

// ErrorRecord is one failed request as the status page lists it. It must
// never contain a prompt, an API key or any other secret, because admins
// see it verbatim.
type ErrorRecord struct {
	Time time.Time `json:"time"`
	// RequestID is the ID the proxy assigned to the request.
	RequestID string `json:"request_id"`
	// Route is the route label of llmproxy_requests_total, such as
	// /api/chat.
	Route string `json:"route"`
	Model string `json:"model"`
	// Node is the node that served the request, or empty when none did.
	Node string `json:"node"`
	// Status is the HTTP status sent to the client, such as 502, or 499
	// when the client went away.
	Status int `json:"status"`
	// Error is the error message.
	Error string `json:"error"`
}

// RecentErrors keeps the latest ErrorRecords in a fixed-size ring. All
// methods are safe for concurrent use.
type RecentErrors struct {
	// mu guards records, next and full.
	mu sync.Mutex
	// records is the ring. Its length is the capacity, fixed at
	// construction.
	records []ErrorRecord
	// next is the index Add writes to.
	next int
	// full is true once Add has wrapped around.
	full bool
}

// NewRecentErrors returns an empty buffer that keeps the latest capacity
// records, or DefaultRecentErrors when capacity is 0 or less.
func NewRecentErrors(capacity int) *RecentErrors {
	if capacity <= 0 {
		capacity = DefaultRecentErrors
	}
	return &RecentErrors{records: make([]ErrorRecord, capacity)}
}

// Add stores rec, replacing the oldest record when the buffer is full. A
// zero rec.Time is set to the current time. Strings longer than
// MaxErrorBytes (Error) or MaxFieldBytes (the others) are cut at a rune
// boundary and end in "…".
func (r *RecentErrors) Add(rec ErrorRecord) {
	if rec.Time.IsZero() {
		rec.Time = time.Now()
	}
	rec.RequestID = truncate(rec.RequestID, MaxFieldBytes)
	rec.Route = truncate(rec.Route, MaxFieldBytes)
	rec.Model = truncate(rec.Model, MaxFieldBytes)
	rec.Node = truncate(rec.Node, MaxFieldBytes)
	rec.Error = truncate(rec.Error, MaxErrorBytes)

	r.mu.Lock()
	defer r.mu.Unlock()
	r.records[r.next] = rec
	r.next++
	if r.next == len(r.records) {
		r.next = 0
		r.full = true
	}
}

// List returns a copy of the stored records, newest first. It returns an
// empty, non-nil slice when there are none, so that the JSON is [] rather
// than null.
func (r *RecentErrors) List() []ErrorRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.next
	if r.full {
		n = len(r.records)
	}
	out := make([]ErrorRecord, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, r.records[(r.next-i+len(r.records))%len(r.records)])
	}
	return out
}

// truncate cuts s to at most limit bytes, ending in "…", without splitting
// a UTF-8 sequence.
func truncate(s string, limit int) string {
	if len(s) <= limit {
		return s
	}
	const ellipsis = "…"
	cut := limit - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + ellipsis
}
