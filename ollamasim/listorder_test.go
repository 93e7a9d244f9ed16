package ollamasim_test

import (
	"encoding/json"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/ollamasim"
)

// settableClock is a Config.Now whose time the test sets.
type settableClock struct{ nanos atomic.Int64 }

func newClock(t time.Time) *settableClock {
	c := &settableClock{}
	c.set(t)
	return c
}

func (c *settableClock) set(t time.Time) { c.nanos.Store(t.UnixNano()) }

func (c *settableClock) now() time.Time { return time.Unix(0, c.nanos.Load()).UTC() }

// listedModel is an entry of /api/tags or /api/ps.
type listedModel struct {
	Name string `json:"name"`
}

func modelNames(models []listedModel) []string {
	names := make([]string, len(models))
	for i, m := range models {
		names[i] = m.Name
	}
	return names
}

// listModels fetches path, an /api/tags or /api/ps route, and returns its
// entries in order.
func listModels(t *testing.T, n *node, path string) []listedModel {
	t.Helper()
	status, body := n.get(t, path)
	if status != http.StatusOK {
		t.Fatalf("GET %s: status %d, body %s", path, status, body)
	}
	var list struct {
		Models []listedModel `json:"models"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("GET %s: body %s is not a model list: %v", path, body, err)
	}
	return list.Models
}

func TestTagsListsNewestFirst(t *testing.T) {
	t0 := time.Date(2026, 12, 4, 21, 0, 0, 0, time.UTC)
	clock := newClock(t0)
	n := startNode(t, ollamasim.Config{
		Now:    clock.now,
		Models: []ollamasim.ModelSpec{{Name: "zeta"}, {Name: "alpha"}},
	})

	// Each copy gets the clock's time as its modified_at, so beta is the
	// newest model and omega the second newest.
	copies := []struct {
		at          time.Time
		source      string
		destination string
	}{
		{t0.Add(time.Hour), "alpha", "beta"},
		{t0.Add(30*time.Minute + 250*time.Millisecond), "zeta", "omega"},
	}
	for _, c := range copies {
		clock.set(c.at)
		body := `{"source":"` + c.source + `","destination":"` + c.destination + `"}`
		if status, data := n.post(t, "/api/copy", body); status != http.StatusOK {
			t.Fatalf("copy %s to %s: status %d, body %s", c.source, c.destination, status, data)
		}
	}

	// alpha and zeta share the start time, so they are in name order.
	want := []string{"beta:latest", "omega:latest", "alpha:latest", "zeta:latest"}
	if got := modelNames(listModels(t, n, "/api/tags")); !slices.Equal(got, want) {
		t.Errorf("/api/tags order %v, want %v", got, want)
	}

	status, body := n.get(t, "/v1/models")
	if status != http.StatusOK {
		t.Fatalf("GET /v1/models: status %d, body %s", status, body)
	}
	var openAI struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &openAI); err != nil {
		t.Fatalf("GET /v1/models: body %s is not a model list: %v", body, err)
	}
	var ids []string
	for _, m := range openAI.Data {
		ids = append(ids, m.ID)
	}
	if !slices.Equal(ids, want) {
		t.Errorf("/v1/models order %v, want the /api/tags order %v", ids, want)
	}
}

func TestPSListsLatestExpiryFirst(t *testing.T) {
	clock := newClock(time.Date(2026, 12, 4, 21, 0, 0, 0, time.UTC))
	n := startNode(t, ollamasim.Config{
		Now:    clock.now,
		Models: []ollamasim.ModelSpec{{Name: "zeta"}, {Name: "alpha"}, {Name: "mid"}},
	})

	// zeta and alpha expire at the same time, so they are in name order.
	loads := []struct{ model, keepAlive string }{
		{"zeta", "5m"},
		{"mid", "1h"},
		{"alpha", "5m"},
	}
	for _, l := range loads {
		n.generate(t, "/api/generate", `{"model":"`+l.model+`","prompt":"x","stream":false,"keep_alive":"`+l.keepAlive+`"}`)
	}

	want := []string{"mid:latest", "alpha:latest", "zeta:latest"}
	if got := modelNames(listModels(t, n, "/api/ps")); !slices.Equal(got, want) {
		t.Errorf("/api/ps order %v, want %v", got, want)
	}
}
